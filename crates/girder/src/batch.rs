//! Ragged (padding-free) batches: the tokens of several sequences packed end to end.
//!
//! A batch of texts of lengths 3, 5 and 2 is one `[10]` vector of ids with
//! `cu_seqlens = [0, 3, 8, 10]`; linear layers and norms run on all 10 rows at once,
//! attention runs per sequence over its own range, and no padding token is ever computed.

use crate::error::Result;
use crate::tokenize::Encoded;
use candle_core::{Device, Tensor};
use std::ops::Range;

/// Token ids, token types and positions of several sequences, packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaggedBatch {
    /// `[total_tokens]`
    pub input_ids: Vec<u32>,
    /// `[total_tokens]`
    pub token_type_ids: Vec<u32>,
    /// `[total_tokens]`: position of each token within its sequence, from 0
    /// (models add their own offset, e.g. RoBERTa's `padding_idx + 1`).
    pub positions: Vec<u32>,
    /// `[num_seqs + 1]`: sequence `i` owns rows `cu_seqlens[i]..cu_seqlens[i + 1]`.
    pub cu_seqlens: Vec<u32>,
    /// The longest sequence.
    pub max_seqlen: usize,
}

/// The batch as tensors on a device, built once per forward pass.
#[derive(Debug, Clone)]
pub struct BatchTensors {
    /// `[total_tokens]` u32
    pub input_ids: Tensor,
    /// `[total_tokens]` u32
    pub token_type_ids: Tensor,
    /// `[total_tokens]` u32
    pub positions: Tensor,
    /// `[num_seqs + 1]`, on the host: sequence `i` owns rows `cu_seqlens[i]..cu_seqlens[i + 1]`.
    pub cu_seqlens: Vec<u32>,
}

impl RaggedBatch {
    /// Packs encodings in the order given.
    pub fn from_encodings<'a>(encodings: impl IntoIterator<Item = &'a Encoded>) -> Self {
        let mut batch = RaggedBatch {
            input_ids: Vec::new(),
            token_type_ids: Vec::new(),
            positions: Vec::new(),
            cu_seqlens: vec![0],
            max_seqlen: 0,
        };
        for enc in encodings {
            batch.push(&enc.ids, &enc.type_ids);
        }
        batch
    }

    /// Sequences of these lengths whose tokens are all id 0: the layout of states computed
    /// earlier (cached hidden states), for the layers and heads that read only the layout.
    pub fn of_lengths(lengths: impl IntoIterator<Item = usize>) -> Self {
        let mut batch = RaggedBatch::from_encodings([]);
        for len in lengths {
            batch.push(&vec![0; len], &[]);
        }
        batch
    }

    /// `n` sequences of one token each: a head's view of rows it reads directly (each
    /// sequence's first-token row or pooled output, computed earlier).
    pub fn single_tokens(n: usize) -> Self {
        Self::of_lengths(std::iter::repeat_n(1, n))
    }

    /// Appends one sequence. `type_ids` may be shorter than `ids` (missing ones are 0).
    pub fn push(&mut self, ids: &[u32], type_ids: &[u32]) {
        self.input_ids.extend_from_slice(ids);
        self.token_type_ids
            .extend((0..ids.len()).map(|i| type_ids.get(i).copied().unwrap_or(0)));
        self.positions.extend(0..ids.len() as u32);
        self.cu_seqlens.push(self.input_ids.len() as u32);
        self.max_seqlen = self.max_seqlen.max(ids.len());
    }

    /// Appends one sequence that continues a cached one: its positions start at
    /// `first_position` (the cache's length), as a decoder's prefill (0) and decode steps need.
    pub fn push_from(&mut self, ids: &[u32], first_position: usize) {
        self.input_ids.extend_from_slice(ids);
        self.token_type_ids
            .extend(std::iter::repeat_n(0, ids.len()));
        let first = first_position as u32;
        self.positions.extend(first..first + ids.len() as u32);
        self.cu_seqlens.push(self.input_ids.len() as u32);
        self.max_seqlen = self.max_seqlen.max(ids.len());
    }

    /// Number of sequences.
    pub fn num_seqs(&self) -> usize {
        self.cu_seqlens.len() - 1
    }

    /// Number of tokens over all sequences.
    pub fn total_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// Rows of sequence `i` in the packed tensors.
    pub fn seq_range(&self, i: usize) -> Range<usize> {
        self.cu_seqlens[i] as usize..self.cu_seqlens[i + 1] as usize
    }

    /// Length of each sequence.
    pub fn seqlens(&self) -> Vec<u32> {
        self.cu_seqlens.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Row of each sequence's first token (`[CLS]` / `<s>`).
    pub fn first_token_rows(&self) -> Vec<u32> {
        self.cu_seqlens[..self.num_seqs()].to_vec()
    }

    /// The tensors a model's forward pass reads.
    pub fn to_tensors(&self, device: &Device) -> Result<BatchTensors> {
        let n = self.total_tokens();
        Ok(BatchTensors {
            input_ids: Tensor::from_slice(&self.input_ids, n, device)?,
            token_type_ids: Tensor::from_slice(&self.token_type_ids, n, device)?,
            positions: Tensor::from_slice(&self.positions, n, device)?,
            cu_seqlens: self.cu_seqlens.clone(),
        })
    }
}

/// Groups sequences into batches of at most `max_batch_tokens` tokens (a sequence longer
/// than the budget gets a batch of its own). Sequences are sorted by length first, so each
/// batch holds sequences of similar length: attention work per batch stays balanced and
/// short texts are not held back by long ones. Returns input indices per batch; the
/// caller puts results back in input order.
pub fn plan_batches(lengths: &[usize], max_batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut tokens = 0;
    for i in order {
        if !current.is_empty() && tokens + lengths[i] > max_batch_tokens {
            batches.push(std::mem::take(&mut current));
            tokens = 0;
        }
        tokens += lengths[i];
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_sorts_by_length_and_respects_the_budget() {
        let plan = plan_batches(&[5, 1, 9, 3, 20], 10);
        assert_eq!(plan, vec![vec![1, 3, 0], vec![2], vec![4]]);
        let all: usize = plan.iter().map(Vec::len).sum();
        assert_eq!(all, 5);
        assert!(plan_batches(&[], 10).is_empty());
    }

    #[test]
    fn packs_sequences_end_to_end() {
        let mut b = RaggedBatch::from_encodings([]);
        b.push(&[1, 2, 3], &[0, 0, 0]);
        b.push(&[4, 5], &[]);
        assert_eq!(b.cu_seqlens, [0, 3, 5]);
        assert_eq!(b.positions, [0, 1, 2, 0, 1]);
        assert_eq!(b.token_type_ids, [0, 0, 0, 0, 0]);
        assert_eq!(b.seq_range(1), 3..5);
        assert_eq!(b.seqlens(), [3, 2]);
        assert_eq!(b.first_token_rows(), [0, 3]);
        assert_eq!(b.max_seqlen, 3);
    }
}
