//! `girder train <task>`: fine-tune a base model on labelled data and write a model folder
//! that transformers loads unchanged; `girder eval`: score a model folder on labelled data.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use girder::hub::Lora;
use girder::models::Head;
use girder::pipelines::text_classification::{self as tc};
use girder::pipelines::Model;
use girder::pretrained::DEFAULT_MAX_BATCH_TOKENS;
use girder::train::data::{bio_tags, read_classification, read_conll, Columns, LabelSet};
use girder::train::export::{write_classifier, write_lora_adapter, Classifier, LoraAdapter};
use girder::train::fit::{EpochReport, Observer, StepReport, TrainedModel};
use girder::train::full::{self, EncodedSet};
use girder::train::head;
use girder::train::metrics::ClassificationMetrics;
use girder::train::ner;
use girder::train::seqeval::NerMetrics;
use girder::train::top_layer;
use girder::train::trainable::Trainable;
use girder::train::{Method, TrainingArguments};
use girder::LoadOptions;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, ValueEnum)]
pub enum TrainTask {
    #[value(name = "text-classification", alias = "sentiment-analysis")]
    TextClassification,
    #[value(name = "token-classification", alias = "ner")]
    TokenClassification,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MethodArg {
    /// Train the head only, on what the frozen encoder computes for it.
    Head,
    /// text-classification: keep the base's first --num-hidden-layers layers; train the last
    /// of them (at the first token), the pooler and the head on what the frozen layers below
    /// compute once.
    TopLayer,
    /// Train every weight (encoder, pooler, head).
    Full,
    /// Train LoRA adapters (--target-modules) and the classifier; writes a PEFT adapter
    /// folder, or with --merge a model folder with the merged weights.
    Lora,
    /// LoRA over the base's linear layers quantized at load (--quantize, default q4_k) and
    /// frozen (QLoRA); writes a PEFT adapter folder, applied to the f32 base at inference.
    Qlora,
}

#[derive(Args)]
pub struct TrainArgs {
    /// The task.
    task: TrainTask,
    /// The base model: a folder or a hub id in the Hugging Face cache (BERT, DistilBERT,
    /// RoBERTa, XLM-RoBERTa or MPNet; a base model or one with a head).
    #[arg(long)]
    base: String,
    /// Training data: .tsv / .csv (with a header row) or .jsonl; token-classification:
    /// CoNLL/BIO (`token<TAB>tag`, a blank line between sentences).
    #[arg(long)]
    data: PathBuf,
    /// Evaluation data, scored after each epoch; the best epoch's weights are kept.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// The model folder to write.
    #[arg(long)]
    out: PathBuf,
    /// What to train.
    #[arg(long, value_enum, default_value = "head")]
    method: MethodArg,
    /// The labels in id order, comma-separated; default: the training file's values, sorted.
    /// token-classification: the entity types (tags O, B-type, I-type in that order).
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// The column (or JSON key) holding the text.
    #[arg(long, default_value = "text")]
    text_column: String,
    /// The column (or JSON key) holding the label: a name, or an id into --labels.
    #[arg(long, default_value = "label")]
    label_column: String,
    #[arg(long, alias = "epochs", default_value_t = 3)]
    num_train_epochs: usize,
    /// Peak learning rate (default: 1e-2 for --method head, 3e-4 for top-layer, 5e-5 for
    /// full, 5e-4 for lora).
    #[arg(long)]
    learning_rate: Option<f64>,
    #[arg(long, alias = "batch-size", default_value_t = 8)]
    per_device_train_batch_size: usize,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Fraction of the steps spent warming up the learning rate linearly.
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    /// The head's dropout (config.json's classifier_dropout); the encoder's own dropout is
    /// the base config's.
    #[arg(long, default_value_t = 0.1)]
    classifier_dropout: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Input limit in tokens; longer texts are truncated (default: the model's limit).
    #[arg(long)]
    max_length: Option<usize>,
    /// Tokens per forward pass at most.
    #[arg(long, default_value_t = DEFAULT_MAX_BATCH_TOKENS)]
    max_batch_tokens: usize,
    /// --method top-layer: the base's first layers the classifier keeps, the last one trained
    /// (default: all of them).
    #[arg(long)]
    num_hidden_layers: Option<usize>,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    lora_r: usize,
    /// LoRA scaling numerator (the update is scaled by alpha / r).
    #[arg(long, default_value_t = 8.0)]
    lora_alpha: f64,
    /// Dropout on the adapters' input.
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f64,
    /// The encoder's linear layers that get adapters, comma-separated (the last segment of
    /// their names); default: the attention's query and value (`query,value` for BERT and
    /// RoBERTa, `q_lin,v_lin` for DistilBERT, `q,v` for MPNet).
    #[arg(long, value_delimiter = ',')]
    target_modules: Vec<String>,
    /// LoRA: write a model folder with the adapters merged into the weights instead of a
    /// PEFT adapter folder (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    merge: bool,
    /// --method qlora: the block type the frozen base is quantized to (q8_0, q6_k, q5_k,
    /// q5_0, q4_k, q4_0; default q4_k).
    #[arg(long, value_parser = super::precision::parse_quantization)]
    quantize: Option<girder::layers::Quantization>,
}

/// Progress bars on a terminal, epoch lines always (stderr).
struct Progress {
    bar: ProgressBar,
    labels: Vec<String>,
}

impl Progress {
    fn new(labels: Vec<String>) -> Self {
        Progress {
            bar: ProgressBar::hidden(),
            labels,
        }
    }

    fn start(&mut self, length: usize, template: &str) {
        self.bar.finish_and_clear();
        self.bar = if std::io::stderr().is_terminal() {
            ProgressBar::new(length as u64)
        } else {
            ProgressBar::hidden()
        };
        self.bar.set_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    }
}

impl Observer for Progress {
    fn features(&mut self, done: usize, _total: usize) {
        self.bar.set_position(done as u64);
    }

    fn step(&mut self, report: &StepReport) {
        if report.step == 1 {
            self.start(
                report.total_steps,
                "training {bar:30} {pos}/{len} steps, {per_sec}, loss {msg}",
            );
        }
        self.bar.set_position(report.step as u64);
        self.bar.set_message(format!("{:.4}", report.loss));
    }

    fn epoch(&mut self, report: &EpochReport) {
        let eval = match &report.eval {
            Some(m) => format!(
                ", eval accuracy {:.4}, macro F1 {:.4}\n{}",
                m.accuracy,
                m.macro_f1,
                m.confusion_table(&self.labels)
            ),
            None => match &report.entities {
                Some(m) => format!(
                    ", eval entities precision {:.4}, recall {:.4}, F1 {:.4}",
                    m.micro.precision, m.micro.recall, m.micro.f1
                ),
                None => String::new(),
            },
        };
        self.bar.suspend(|| {
            eprintln!(
                "epoch {}: train loss {:.4}, {:.0} examples/s{eval}",
                report.epoch, report.train_loss, report.examples_per_s
            )
        });
    }
}

fn columns(text: &str, label: &str) -> Columns {
    Columns {
        text: text.to_string(),
        label: label.to_string(),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The method and the optimisation settings of the command line.
fn settings(args: &TrainArgs) -> Result<(Method, TrainingArguments)> {
    let method = match args.method {
        MethodArg::Head => Method::Head,
        MethodArg::TopLayer => Method::TopLayer,
        MethodArg::Full => Method::Full,
        MethodArg::Lora | MethodArg::Qlora => Method::Lora,
    };
    match (args.method, args.quantize, args.merge) {
        (MethodArg::Qlora, _, true) => anyhow::bail!(
            "--merge with --method qlora: the adapters trained over a quantized base; write the adapter folder and apply it to the f32 base (--adapter)"
        ),
        (MethodArg::Qlora, _, false) | (_, None, _) => {}
        (_, Some(q), _) => anyhow::bail!("--quantize {} is for --method qlora", q.name()),
    }
    let training = TrainingArguments {
        num_train_epochs: args.num_train_epochs,
        learning_rate: args
            .learning_rate
            .unwrap_or_else(|| method.default_learning_rate()),
        per_device_train_batch_size: args.per_device_train_batch_size,
        weight_decay: args.weight_decay,
        warmup_ratio: args.warmup_ratio,
        seed: args.seed,
        classifier_dropout: args.classifier_dropout,
        ..TrainingArguments::default()
    };
    training.validate()?;
    if args.num_hidden_layers.is_some() && method != Method::TopLayer {
        anyhow::bail!("--num-hidden-layers is for --method top-layer");
    }
    Ok((method, training))
}

pub fn run(args: TrainArgs) -> Result<()> {
    if let TrainTask::TokenClassification = args.task {
        return run_ner(args);
    }
    let (method, training) = settings(&args)?;
    let cols = columns(&args.text_column, &args.label_column);
    let labels = match &args.labels {
        Some(names) => Some(LabelSet::new(names.clone())?),
        None => None,
    };
    let train_data = read_classification(&args.data, &cols, labels.as_ref())?;
    let labels = train_data.labels.clone();
    let eval_data = match &args.eval {
        Some(path) => Some(read_classification(path, &cols, Some(&labels))?),
        None => None,
    };
    let layers = match method {
        Method::TopLayer => Some(match args.num_hidden_layers {
            Some(n) => n,
            None => {
                top_layer::default_num_hidden_layers(top_layer::base_num_hidden_layers(&args.base)?)
            }
        }),
        _ => None,
    };
    let trainable = load_trainable(
        &args,
        Head::SequenceClassification,
        labels.names(),
        method,
        &training,
        layers,
    )?;
    let model = &trainable.model;
    eprintln!(
        "{} examples ({} labels: {}), {} for evaluation; base {} as {}{}, max length {}",
        train_data.examples.len(),
        labels.len(),
        labels.listing(),
        eval_data.as_ref().map_or(0, |d| d.examples.len()),
        args.base,
        model.encoder.class_name(),
        layers.map_or(String::new(), |n| format!(
            " up to layer {n} (the last one trained)"
        )),
        model.tokenizer.max_length()
    );
    let mut progress = Progress::new(labels.names().to_vec());
    let started = Instant::now();
    let train_labels = train_data.label_ids();
    let eval_labels = eval_data.as_ref().map(|d| d.label_ids());
    let trained = if method == Method::Head {
        progress.start(
            train_labels.len(),
            "encoding {bar:30} {pos}/{len} texts, {per_sec}, {elapsed}",
        );
        let train_features =
            head::sequence_features(model, &train_data.texts(), &train_labels, &mut progress)?;
        let eval_features = match (&eval_data, &eval_labels) {
            (Some(d), Some(l)) => {
                progress.start(
                    l.len(),
                    "encoding eval {bar:30} {pos}/{len} texts, {per_sec}, {elapsed}",
                );
                Some(head::sequence_features(
                    model,
                    &d.texts(),
                    l,
                    &mut progress,
                )?)
            }
            _ => None,
        };
        let encoded = train_labels.len() + eval_labels.as_ref().map_or(0, Vec::len);
        let encoded_s = started.elapsed().as_secs_f64();
        progress.bar.finish_and_clear();
        eprintln!(
            "features of {encoded} texts in {encoded_s:.1} s ({:.1} texts/s)",
            encoded as f64 / encoded_s.max(1e-9)
        );
        head::train_head(
            &trainable,
            &train_features,
            eval_features.as_ref(),
            &training,
            &mut progress,
        )?
    } else if let (Method::TopLayer, Some(layers)) = (method, layers) {
        top_layer::check_supported(model)?;
        let frozen = top_layer::load_frozen(&args.base, layers, &load_options(&args))?;
        progress.start(
            train_labels.len(),
            "encoding {bar:30} {pos}/{len} texts, {per_sec}, {elapsed}",
        );
        let train_inputs =
            top_layer::layer_inputs(&frozen, &train_data.texts(), &train_labels, &mut progress)?;
        let eval_inputs = match (&eval_data, &eval_labels) {
            (Some(d), Some(l)) => {
                progress.start(
                    l.len(),
                    "encoding eval {bar:30} {pos}/{len} texts, {per_sec}, {elapsed}",
                );
                Some(top_layer::layer_inputs(
                    &frozen,
                    &d.texts(),
                    l,
                    &mut progress,
                )?)
            }
            _ => None,
        };
        drop(frozen);
        let encoded = train_labels.len() + eval_labels.as_ref().map_or(0, Vec::len);
        let encoded_s = started.elapsed().as_secs_f64();
        progress.bar.finish_and_clear();
        eprintln!(
            "states entering layer {layers} of {encoded} texts in {encoded_s:.1} s ({:.1} texts/s)",
            encoded as f64 / encoded_s.max(1e-9)
        );
        top_layer::train_top_layer(
            &trainable,
            &train_inputs,
            eval_inputs.as_ref(),
            &training,
            &mut progress,
        )?
    } else {
        let train_encodings = model.encode_texts(&train_data.texts())?;
        let eval_encodings = match &eval_data {
            Some(d) => Some(model.encode_texts(&d.texts())?),
            None => None,
        };
        let eval_set = match (&eval_encodings, &eval_labels) {
            (Some(encodings), Some(labels)) => Some(EncodedSet { encodings, labels }),
            _ => None,
        };
        full::train_sequence_classifier(
            &trainable,
            EncodedSet {
                encodings: &train_encodings,
                labels: &train_labels,
            },
            eval_set,
            &training,
            &mut progress,
        )?
    };
    progress.bar.finish_and_clear();
    let kept = trained.epochs[trained.best_epoch - 1].eval.clone();
    let summary = serde_json::json!({
        "out": args.out,
        "method": method_name(&args, method),
        "best_epoch": trained.best_epoch,
        "eval": kept,
        "train_examples": train_data.examples.len(),
        "train_examples_per_s_by_epoch": trained.epochs.iter().map(|e| e.examples_per_s).collect::<Vec<_>>(),
        "total_s": started.elapsed().as_secs_f64(),
    });
    let evaluation = match (&args.eval, &kept) {
        (Some(path), Some(m)) => Some((file_name(path), m)),
        _ => None,
    };
    let output = Output {
        trainable: &trainable,
        trained: &trained,
        labels: &labels,
        head: Head::SequenceClassification,
        training: &training,
    };
    output.write(&args, evaluation, None, summary)
}

/// The base loaded for training with the head asked for; the newly initialised tensors are
/// named on stderr, as transformers warns about them.
fn load_trainable(
    args: &TrainArgs,
    head: Head,
    labels: &[String],
    method: Method,
    training: &TrainingArguments,
    num_hidden_layers: Option<usize>,
) -> Result<Trainable> {
    let options = LoadOptions {
        num_hidden_layers,
        ..load_options(args)
    };
    let lora = (method == Method::Lora).then(|| lora_of(args));
    let trainable = Trainable::load(&args.base, head, labels, method, lora, training, options)
        .with_context(|| format!("loading the base model {}", args.base))?;
    let new = trainable.new_tensors();
    if !new.is_empty() {
        eprintln!("newly initialised: {}", new.join(", "));
    }
    let adapters = trainable
        .parameters()
        .trained()
        .iter()
        .filter(|(n, _)| n.ends_with(".lora_A.weight"))
        .count();
    if adapters > 0 {
        eprintln!("LoRA adapters on {adapters} linear layers");
    }
    Ok(trainable)
}

/// The input limit and batch budget of the command line.
fn load_options(args: &TrainArgs) -> LoadOptions {
    LoadOptions {
        max_length: args.max_length,
        max_batch_tokens: args.max_batch_tokens,
        quantize: matches!(args.method, MethodArg::Qlora)
            .then(|| args.quantize.unwrap_or(girder::layers::Quantization::Q4K)),
        ..LoadOptions::default()
    }
}

/// The method's name in the summary: `qlora` for LoRA over a quantized base.
fn method_name(args: &TrainArgs, method: Method) -> &'static str {
    match args.method {
        MethodArg::Qlora => "qlora",
        _ => method.name(),
    }
}

/// What a training run produced, to write at `--out`.
struct Output<'a> {
    trainable: &'a Trainable,
    trained: &'a TrainedModel,
    labels: &'a LabelSet,
    head: Head,
    training: &'a TrainingArguments,
}

impl Output<'_> {
    /// Writes the kept epoch's adapters and head as a PEFT adapter folder (LoRA without
    /// `--merge`) or the model folder, and prints `summary` with `adapter` set.
    fn write(
        &self,
        args: &TrainArgs,
        evaluation: Option<(String, &ClassificationMetrics)>,
        ner_evaluation: Option<(String, &NerMetrics)>,
        mut summary: serde_json::Value,
    ) -> Result<()> {
        let adapter = match (&self.trained.adapters, self.trainable.lora(), args.merge) {
            (Some(adapters), Some(lora), false) => {
                write_lora_adapter(
                    &LoraAdapter {
                        base_reference: &args.base,
                        lora: &lora,
                        tensors: adapters.clone(),
                        modules_to_save: self.trainable.head_modules(),
                        datasets: vec![file_name(&args.data)],
                        labels: self.labels.names(),
                        head: self.head,
                        quantized_base: load_options(args).quantize,
                    },
                    &args.out,
                )
                .with_context(|| format!("writing {}", args.out.display()))?;
                true
            }
            _ => {
                write_classifier(
                    &Classifier {
                        model: &self.trainable.model,
                        base_reference: &args.base,
                        labels: self.labels,
                        tensors: self.trained.tensors.clone(),
                        datasets: vec![file_name(&args.data)],
                        evaluation,
                        ner_evaluation,
                        method: self.trainable.method().name(),
                        args: self.training,
                        best_epoch: self.trained.best_epoch,
                    },
                    &args.out,
                )
                .with_context(|| format!("writing {}", args.out.display()))?;
                false
            }
        };
        summary["adapter"] = adapter.into();
        println!("{summary}");
        Ok(())
    }
}

/// `girder train token-classification`: head-only on the frozen encoder's word features, or
/// full / LoRA through the encoder.
fn run_ner(args: TrainArgs) -> Result<()> {
    let (method, training) = settings(&args)?;
    let fixed = match &args.labels {
        Some(types) => Some(bio_tags(types)?),
        None => None,
    };
    let (train_sentences, tags) = read_conll(&args.data, fixed.as_ref())?;
    let eval_sentences = match &args.eval {
        Some(path) => Some(read_conll(path, Some(&tags))?.0),
        None => None,
    };
    if method == Method::TopLayer {
        anyhow::bail!(
            "--method top-layer trains sequence classifiers (text-classification); use head, full or lora"
        );
    }
    let trainable = load_trainable(
        &args,
        Head::TokenClassification,
        tags.names(),
        method,
        &training,
        None,
    )?;
    let model = &trainable.model;
    eprintln!(
        "{} sentences ({} tags: {}), {} for evaluation; base {} as {}",
        train_sentences.len(),
        tags.len(),
        tags.listing(),
        eval_sentences.as_ref().map_or(0, Vec::len),
        args.base,
        model.encoder.class_name()
    );
    let started = Instant::now();
    let mut progress = Progress::new(tags.names().to_vec());
    let (trained, ner_metrics) = if method == Method::Head {
        progress.start(
            train_sentences.len(),
            "encoding {bar:30} {pos}/{len} sentences, {per_sec}, {elapsed}",
        );
        let train_features = head::token_features(model, &train_sentences, &mut progress)?;
        let eval_features = match &eval_sentences {
            Some(s) => Some(head::token_features(model, s, &mut progress)?),
            None => None,
        };
        progress.bar.finish_and_clear();
        let eval_set = eval_features.as_ref().zip(eval_sentences.as_deref());
        let trained = head::train_token_head(
            &trainable,
            &train_features,
            eval_set,
            &tags,
            &training,
            &mut progress,
        )?;
        progress.bar.finish_and_clear();
        let metrics = trained.epochs[trained.best_epoch - 1].entities.clone();
        (trained, metrics)
    } else {
        let train_encoded = ner::encode_sentences(model, &train_sentences)?;
        let eval_encoded = match &eval_sentences {
            Some(s) => Some(ner::encode_sentences(model, s)?),
            None => None,
        };
        let eval_set = eval_sentences.as_deref().zip(eval_encoded.as_deref());
        let trained = full::train_token_classifier(
            &trainable,
            &train_encoded,
            eval_set,
            &tags,
            &training,
            &mut progress,
        )?;
        progress.bar.finish_and_clear();
        let metrics = trained.epochs[trained.best_epoch - 1].entities.clone();
        (trained, metrics)
    };
    print_entities(ner_metrics.as_ref());
    let summary = serde_json::json!({
        "out": args.out,
        "method": method_name(&args, method),
        "best_epoch": trained.best_epoch,
        "entities": ner_metrics,
        "train_sentences": train_sentences.len(),
        "train_examples_per_s_by_epoch": trained.epochs.iter().map(|e| e.examples_per_s).collect::<Vec<_>>(),
        "total_s": started.elapsed().as_secs_f64(),
    });
    let evaluation = match (&args.eval, &ner_metrics) {
        (Some(path), Some(m)) => Some((file_name(path), m)),
        _ => None,
    };
    let output = Output {
        trainable: &trainable,
        trained: &trained,
        labels: &tags,
        head: Head::TokenClassification,
        training: &training,
    };
    output.write(&args, None, evaluation, summary)
}

/// The LoRA settings of the command line.
fn lora_of(args: &TrainArgs) -> Lora {
    Lora {
        r: args.lora_r,
        lora_alpha: args.lora_alpha,
        lora_dropout: args.lora_dropout,
        target_modules: args.target_modules.clone(),
    }
}

/// The per-type and micro-averaged entity scores, on stderr.
fn print_entities(metrics: Option<&NerMetrics>) {
    let Some(m) = metrics else {
        return;
    };
    for (kind, s) in &m.per_type {
        eprintln!(
            "{kind:>12}  precision {:.4}  recall {:.4}  F1 {:.4}  support {}",
            s.precision, s.recall, s.f1, s.support
        );
    }
    eprintln!(
        "{:>12}  precision {:.4}  recall {:.4}  F1 {:.4}  support {}",
        "micro avg", m.micro.precision, m.micro.recall, m.micro.f1, m.micro.support
    );
}

#[derive(Args)]
pub struct EvalArgs {
    /// A text-classification or token-classification model folder or hub id.
    #[arg(long, short)]
    model: String,
    /// Labelled data: for text classification .tsv / .csv (with a header row) or .jsonl,
    /// labels as names or ids of the model's id2label; for token classification CoNLL/BIO
    /// (`token<TAB>tag`, a blank line between sentences), tags from the model's id2label.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "text")]
    text_column: String,
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Input limit in tokens (default: the model's limit).
    #[arg(long)]
    max_length: Option<usize>,
    /// Tokens per forward pass at most.
    #[arg(long, default_value_t = DEFAULT_MAX_BATCH_TOKENS)]
    max_batch_tokens: usize,
    /// A PEFT LoRA adapter folder applied to `--model` at load (as `girder run --adapter`).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Token classification: also write each word with its gold and predicted tag
    /// (`word<TAB>gold<TAB>predicted`, a blank line between sentences), for a cross-check
    /// with seqeval (`scripts/seqeval-check`).
    #[arg(long)]
    predictions: Option<PathBuf>,
    #[command(flatten)]
    precision: super::precision::PrecisionArgs,
}

/// Prints the metrics as one JSON object on stdout and the confusion matrix on stderr.
pub fn eval(args: EvalArgs) -> Result<()> {
    let options = LoadOptions {
        max_length: args.max_length,
        max_batch_tokens: args.max_batch_tokens,
        adapter: args.adapter.clone(),
        ..LoadOptions::default()
    };
    let model = args
        .precision
        .load(&args.model, &options, "eval")?
        .into_encoder()?;
    let labels = LabelSet::new(model.config.id2label.clone())?;
    if model.encoder.head() == girder::models::Head::TokenClassification {
        return eval_ner(&args, &model, &labels);
    }
    let data = read_classification(
        &args.data,
        &columns(&args.text_column, &args.label_column),
        Some(&labels),
    )?;
    let results = tc::run(&model, &data.texts(), &tc::Options::default())?;
    let predicted = results
        .iter()
        .map(|r| {
            let best = r.best.as_ref().context("no label predicted")?;
            labels
                .names()
                .iter()
                .position(|n| *n == best.label)
                .with_context(|| format!("predicted label {} is not in id2label", best.label))
        })
        .collect::<Result<Vec<_>>>()?;
    let metrics = ClassificationMetrics::compute(&data.label_ids(), &predicted, labels.len());
    eprintln!("{}", metrics.confusion_table(labels.names()));
    println!(
        "{}",
        serde_json::json!({
            "model": args.model,
            "data": args.data,
            "accuracy": metrics.accuracy,
            "macro_f1": metrics.macro_f1,
            "confusion": metrics.confusion,
            "labels": labels.names(),
            "count": metrics.count,
        })
    );
    Ok(())
}

/// `girder eval` of a token classifier on CoNLL/BIO sentences: seqeval's entity-level
/// precision, recall and F1 per type and micro-averaged, as JSON on stdout.
fn eval_ner(args: &EvalArgs, model: &Model, tags: &LabelSet) -> Result<()> {
    let (sentences, _) = read_conll(&args.data, Some(tags))?;
    let predicted = ner::predict_word_tags(model, &sentences)?;
    let metrics = ner::score(&sentences, &predicted, tags);
    if let Some(path) = &args.predictions {
        let mut lines = String::new();
        for (sentence, predicted) in sentences.iter().zip(&predicted) {
            for ((word, &gold), predicted) in
                sentence.words.iter().zip(&sentence.tags).zip(predicted)
            {
                lines.push_str(&format!("{word}\t{}\t{predicted}\n", tags.names()[gold]));
            }
            lines.push('\n');
        }
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    print_entities(Some(&metrics));
    println!(
        "{}",
        serde_json::json!({
            "model": args.model,
            "data": args.data,
            "entities": metrics,
            "sentences": sentences.len(),
        })
    );
    Ok(())
}
