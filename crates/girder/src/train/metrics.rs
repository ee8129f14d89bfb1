//! Classification metrics: accuracy, macro F1 and the confusion matrix.

use serde::Serialize;

/// How well predictions match gold labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationMetrics {
    pub accuracy: f64,
    /// The unweighted mean of each class's F1 over every class of the label set (a class
    /// never predicted nor present scores 0, as scikit-learn's `zero_division=0`).
    pub macro_f1: f64,
    /// `confusion[gold][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// Number of examples.
    pub count: usize,
}

impl ClassificationMetrics {
    /// Scores `predicted` against `gold` (label ids below `num_labels`).
    pub fn compute(gold: &[usize], predicted: &[usize], num_labels: usize) -> Self {
        let mut confusion = vec![vec![0usize; num_labels]; num_labels];
        for (&g, &p) in gold.iter().zip(predicted) {
            confusion[g][p] += 1;
        }
        let count = gold.len().min(predicted.len());
        let correct: usize = (0..num_labels).map(|c| confusion[c][c]).sum();
        let f1 = |c: usize| {
            let tp = confusion[c][c] as f64;
            let predicted_c: usize = (0..num_labels).map(|g| confusion[g][c]).sum();
            let gold_c: usize = confusion[c].iter().sum();
            let denominator = predicted_c as f64 + gold_c as f64;
            if denominator == 0.0 {
                0.0
            } else {
                2.0 * tp / denominator
            }
        };
        ClassificationMetrics {
            accuracy: if count == 0 {
                0.0
            } else {
                correct as f64 / count as f64
            },
            macro_f1: (0..num_labels).map(f1).sum::<f64>() / num_labels.max(1) as f64,
            confusion,
            count,
        }
    }

    /// The confusion matrix as a text table with the label names (rows: gold,
    /// columns: predicted).
    pub fn confusion_table(&self, labels: &[String]) -> String {
        let width = labels.iter().map(String::len).max().unwrap_or(0).max(8);
        let mut lines = vec![format!(
            "{:>width$}  {}",
            "gold\\pred",
            labels
                .iter()
                .map(|l| format!("{l:>width$}"))
                .collect::<Vec<_>>()
                .join(" ")
        )];
        for (g, row) in self.confusion.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|n| format!("{n:>width$}")).collect();
            let name = labels.get(g).map(String::as_str).unwrap_or("?");
            lines.push(format!("{name:>width$}  {}", cells.join(" ")));
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_scikit_learn_on_a_small_case() {
        // sklearn: accuracy_score = 5/6; f1_score(average="macro"): class 0 has tp 2,
        // 3 predicted, 2 gold → 0.8; class 1: tp 1, 1 predicted, 2 gold → 2/3; class 2 → 1.
        let m = ClassificationMetrics::compute(&[0, 0, 1, 1, 2, 2], &[0, 0, 1, 0, 2, 2], 3);
        assert_eq!(
            m.confusion,
            vec![vec![2, 0, 0], vec![1, 1, 0], vec![0, 0, 2]]
        );
        assert!((m.accuracy - 5.0 / 6.0).abs() < 1e-12);
        let expected = (0.8 + 2.0 / 3.0 + 1.0) / 3.0;
        assert!((m.macro_f1 - expected).abs() < 1e-12, "{}", m.macro_f1);
        // A class absent from gold and predictions counts as 0 in the mean.
        let m = ClassificationMetrics::compute(&[0, 1], &[0, 1], 3);
        assert!((m.macro_f1 - 2.0 / 3.0).abs() < 1e-12);
    }
}
