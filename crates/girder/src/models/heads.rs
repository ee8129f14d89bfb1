//! The task heads of the encoder families, written once.
//!
//! transformers gives every family its own head classes, but they come in three shapes:
//! a classifier on the first token (after a dense layer, or BERT's pooler), a classifier on
//! every token, and a masked-LM head whose decoder is tied to the word embeddings. Each
//! family file names its checkpoint tensors and builds one of these; [`WithHead`] puts it
//! on the base model.

use super::{EncoderForward, EncoderOutput};
use crate::batch::RaggedBatch;
use crate::error::{Error, Result};
use crate::hub::Weights;
use crate::layers::LayerNorm;
use crate::layers::{Activation, Dropout, Embedding, Linear};
use candle_core::Tensor;
use candle_nn::Module;

/// A head on top of an encoder's output.
pub(crate) enum EncoderHead {
    /// Dropout, then a classifier on the base model's pooler output (BERT).
    Pooled {
        dropout: Dropout,
        classifier: Linear,
    },
    /// `dropout → dense → activation → dropout` on each sequence's first token, then
    /// `out_proj` (RoBERTa's and MPNet's classification heads; DistilBERT's `pre_classifier`
    /// and `classifier`, with no dropout before the first).
    FirstToken {
        input_dropout: Dropout,
        dense: Linear,
        activation: Activation,
        dropout: Dropout,
        out_proj: Linear,
    },
    /// `dense → activation → out_proj` on the base model's pooler output (BART's
    /// `classification_head`, on the decoder state of the last `</s>`).
    PooledDense {
        dense: Linear,
        activation: Activation,
        out_proj: Linear,
    },
    /// Dropout, then a linear classifier on every token.
    PerToken {
        dropout: Dropout,
        classifier: Linear,
    },
    /// `dense → activation → LayerNorm → decoder + bias`, with the decoder usually tied to
    /// the word embeddings.
    MaskedLm {
        dense: Linear,
        activation: Activation,
        norm: LayerNorm,
        decoder: Linear,
    },
}

impl EncoderHead {
    /// Sequence heads return `[num_seqs, labels]`; token heads `[rows or total_tokens, labels | vocab]`.
    fn forward(
        &self,
        out: &EncoderOutput,
        batch: &RaggedBatch,
        rows: Option<&[u32]>,
    ) -> Result<Tensor> {
        match self {
            EncoderHead::Pooled {
                dropout,
                classifier,
            } => {
                let pooled = out
                    .pooler_output
                    .as_ref()
                    .ok_or_else(|| Error::MissingTensor {
                        name: "pooler.dense.weight".into(),
                        files: "a sequence classifier on the pooler needs the pooler".into(),
                    })?;
                classifier.forward(&dropout.forward(pooled.clone())?)
            }
            EncoderHead::FirstToken {
                input_dropout,
                dense,
                activation,
                dropout,
                out_proj,
            } => {
                let first = input_dropout.forward(first_tokens(&out.last_hidden_state, batch)?)?;
                let h = dropout.forward(activation.forward(&dense.forward(&first)?)?)?;
                out_proj.forward(&h)
            }
            EncoderHead::PooledDense {
                dense,
                activation,
                out_proj,
            } => {
                let pooled = out
                    .pooler_output
                    .as_ref()
                    .ok_or_else(|| Error::Unsupported {
                        what: "a pooled classification head on a model without a pooled output"
                            .into(),
                    })?;
                out_proj.forward(&activation.forward(&dense.forward(pooled)?)?)
            }
            EncoderHead::PerToken {
                dropout,
                classifier,
            } => {
                let hidden = select_rows(&out.last_hidden_state, rows)?;
                classifier.forward(&dropout.forward(hidden)?)
            }
            EncoderHead::MaskedLm {
                dense,
                activation,
                norm,
                decoder,
            } => {
                let h = select_rows(&out.last_hidden_state, rows)?;
                let h = norm.forward(&activation.forward(&dense.forward(&h)?)?)?;
                decoder.forward(&h)
            }
        }
    }
}

/// The heads RoBERTa and MPNet share (transformers' `RobertaClassificationHead` and
/// `MPNetClassificationHead`, `RobertaLMHead` and `MPNetLMHead` are the same modules):
/// `classifier.dense` + tanh on the first token, then `classifier.out_proj`; `classifier` on
/// every token; `lm_head`: dense, exact GELU whatever `hidden_act` says, LayerNorm, decoder
/// tied to the word embeddings. `dropout` is the classifiers' dropout, `eps` the LM head's
/// LayerNorm epsilon. `None` for a base model.
pub(crate) fn first_token_heads(
    w: &Weights,
    head: super::Head,
    hidden: usize,
    labels: usize,
    dropout: Dropout,
    eps: f64,
    word_embeddings: &Embedding,
) -> Result<Option<EncoderHead>> {
    use super::Head;
    Ok(Some(match head {
        Head::Base => return Ok(None),
        Head::SequenceClassification => EncoderHead::FirstToken {
            input_dropout: dropout,
            dense: Linear::load(&w.pp("classifier.dense"), hidden, hidden)?,
            activation: Activation::Tanh,
            dropout,
            out_proj: Linear::load(&w.pp("classifier.out_proj"), hidden, labels)?,
        },
        Head::TokenClassification => EncoderHead::PerToken {
            dropout,
            classifier: Linear::load(&w.pp("classifier"), hidden, labels)?,
        },
        Head::MaskedLM => {
            let p = w.pp("lm_head");
            EncoderHead::MaskedLm {
                dense: Linear::load(&p.pp("dense"), hidden, hidden)?,
                activation: Activation::Gelu,
                norm: crate::layers::layer_norm(&p.pp("layer_norm"), hidden, eps)?,
                decoder: tied_decoder(
                    &p,
                    "decoder.weight",
                    &["bias", "decoder.bias"],
                    word_embeddings,
                )?,
            }
        }
        Head::CausalLM | Head::Seq2SeqLM | Head::SpeechSeq2Seq => {
            return Err(Error::unsupported_head("an encoder", head.name()))
        }
    }))
}

/// The decoder of a masked-LM head: its own `weight` when the checkpoint stores one, else the
/// word embeddings (tied, as transformers ties them); the bias under the first of `biases`
/// the checkpoint has.
pub(crate) fn tied_decoder(
    w: &Weights,
    decoder_weight: &str,
    biases: &[&str],
    word_embeddings: &Embedding,
) -> Result<Linear> {
    let (vocab, hidden) = word_embeddings.dims();
    let bias_name = biases.iter().find(|b| w.contains(b)).unwrap_or(&biases[0]);
    let bias = Some(w.get([vocab], bias_name)?);
    if !w.contains(decoder_weight) {
        return word_embeddings.tied_projection(bias);
    }
    // A checkpoint's own copy loads as any linear layer (half or quantized as the weights
    // say).
    let decoder = match decoder_weight.strip_suffix(".weight") {
        Some(module) => w.pp(module),
        None => w.clone(),
    }
    .for_output();
    Ok(Linear::load_no_bias(&decoder, hidden, vocab)?.with_bias(bias))
}

/// Rows of each sequence's first token: `[total_tokens, h]` → `[num_seqs, h]`.
pub(crate) fn first_tokens(hidden: &Tensor, batch: &RaggedBatch) -> Result<Tensor> {
    let rows = Tensor::new(batch.first_token_rows(), hidden.device())?;
    Ok(hidden.index_select(&rows, 0)?)
}

/// Selects `rows` of `hidden`, or all of them.
fn select_rows(hidden: &Tensor, rows: Option<&[u32]>) -> Result<Tensor> {
    Ok(match rows {
        Some(rows) => hidden.index_select(&Tensor::new(rows, hidden.device())?, 0)?,
        None => hidden.clone(),
    })
}

/// A base model with a head: `BertForTokenClassification` is a `BertModel` with a
/// [`EncoderHead::PerToken`] head.
pub(crate) struct WithHead<B> {
    pub base: B,
    pub head: EncoderHead,
}

impl<B: EncoderForward> EncoderForward for WithHead<B> {
    fn encode(&self, batch: &RaggedBatch) -> Result<EncoderOutput> {
        self.base.encode(batch)
    }

    fn encode_last_layer(&self, hidden: &Tensor, batch: &RaggedBatch) -> Result<EncoderOutput> {
        self.base.encode_last_layer(hidden, batch)
    }

    fn head(
        &self,
        out: &EncoderOutput,
        batch: &RaggedBatch,
        rows: Option<&[u32]>,
    ) -> Result<Tensor> {
        self.head.forward(out, batch, rows)
    }

    fn word_embeddings(&self) -> &Embedding {
        self.base.word_embeddings()
    }

    fn max_position_embeddings(&self) -> usize {
        self.base.max_position_embeddings()
    }
}
