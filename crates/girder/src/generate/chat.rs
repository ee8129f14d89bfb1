//! Chat templates: a model's Jinja template rendered with minijinja, as transformers'
//! `apply_chat_template` renders it (`utils/chat_template_utils.py`): `trim_blocks` and
//! `lstrip_blocks` on, loop controls, Python string methods (`.strip()`, `.startswith()`...),
//! `raise_exception`, a `tojson` that writes what Python's `json.dumps(ensure_ascii=False)`
//! writes, and the special tokens (`bos_token`, `eos_token`, ...) as variables.
//!
//! The template comes from `chat_template.jinja`, else `chat_template` in
//! tokenizer_config.json (a string, or a list of named templates: `default` is used), or from
//! a GGUF file's `tokenizer.chat_template`.

use crate::config::read_json;
use crate::error::{Error, Result};
use crate::hub::{GgufFile, ModelFolder};
use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    origin: String,
    env: Environment<'static>,
    special_tokens: Vec<(String, String)>,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish()
    }
}

const NAME: &str = "chat_template";

/// The work one rendering may do, in minijinja's fuel: one unit per instruction, and one per
/// 64 bytes of every string, list or output it produces. Templates come with model files, so
/// a hostile one (loops nested a billion deep, a string doubled sixty times) is cut off after
/// about a tenth of a second and 64 MB of data; a real template on a conversation of several
/// megabytes uses a few percent of it.
pub const RENDER_FUEL: u64 = 1_000_000;

/// Nesting of macro calls and includes a rendering may reach: well past real templates, and
/// far inside the stack of a server thread.
const RECURSION_LIMIT: usize = 100;

impl ChatTemplate {
    /// Compiles `source`; `origin` (a file name) appears in errors; `special_tokens` are
    /// `(name, text)` pairs such as `("bos_token", "<s>")`.
    pub fn new(
        source: &str,
        origin: impl Into<String>,
        special_tokens: Vec<(String, String)>,
    ) -> Result<Self> {
        let origin = origin.into();
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| template_error(&origin, &e))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(RENDER_FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| template_error(&origin, &e))?;
        Ok(ChatTemplate {
            origin,
            env,
            special_tokens,
            source: source.to_string(),
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The template of a model folder, if it has one.
    pub fn from_folder(folder: &ModelFolder) -> Result<Option<Self>> {
        #[derive(Deserialize, Default)]
        struct Config {
            #[serde(default)]
            chat_template: Option<TemplateField>,
            #[serde(flatten)]
            rest: serde_json::Map<String, serde_json::Value>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum TemplateField {
            One(String),
            Named(Vec<NamedTemplate>),
        }
        #[derive(Deserialize)]
        struct NamedTemplate {
            name: String,
            template: String,
        }
        let config: Config = match folder.file("tokenizer_config.json") {
            Some(path) => read_json(&path)?,
            None => Config::default(),
        };
        let special_tokens = ["bos_token", "eos_token", "unk_token", "pad_token"]
            .iter()
            .filter_map(|name| {
                let text = match config.rest.get(*name)? {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Object(o) => o.get("content")?.as_str()?.to_string(),
                    _ => return None,
                };
                Some((name.to_string(), text))
            })
            .collect();
        if let Some(path) = folder.file("chat_template.jinja") {
            let source = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            return Self::new(&source, path.display().to_string(), special_tokens).map(Some);
        }
        let origin = folder
            .root()
            .join("tokenizer_config.json")
            .display()
            .to_string();
        match config.chat_template {
            None => Ok(None),
            Some(TemplateField::One(source)) => {
                Self::new(&source, origin, special_tokens).map(Some)
            }
            Some(TemplateField::Named(list)) => {
                match list.into_iter().find(|t| t.name == "default") {
                    Some(t) => Self::new(&t.template, origin, special_tokens).map(Some),
                    None => Ok(None),
                }
            }
        }
    }

    /// The template of a GGUF file (`tokenizer.chat_template`), else its family's
    /// (`family_default`, the registry's [`GgufFormat::default_chat_template`](crate::models::registry::GgufFormat)), else none.
    pub fn from_gguf(
        gguf: &GgufFile,
        tokens: &tokenizers::Tokenizer,
        family_default: Option<&'static str>,
    ) -> Result<Option<Self>> {
        let (source, origin) = match (gguf.chat_template()?, family_default) {
            (Some(source), _) => (
                source,
                format!("{} (tokenizer.chat_template)", gguf.path().display()),
            ),
            (None, Some(source)) => {
                tracing::info!(
                    "{} carries no tokenizer.chat_template: chats use its family's template",
                    gguf.path().display()
                );
                (
                    source,
                    format!(
                        "the family chat template for {} (the file carries none)",
                        gguf.path().display()
                    ),
                )
            }
            (None, None) => return Ok(None),
        };
        let mut special_tokens = Vec::new();
        for (name, key) in [
            ("bos_token", "tokenizer.ggml.bos_token_id"),
            ("eos_token", "tokenizer.ggml.eos_token_id"),
            ("unk_token", "tokenizer.ggml.unknown_token_id"),
            ("pad_token", "tokenizer.ggml.padding_token_id"),
        ] {
            if let Some(text) = gguf.opt_u32(key)?.and_then(|id| tokens.id_to_token(id)) {
                special_tokens.push((name.to_string(), text));
            }
        }
        Self::new(source, origin, special_tokens).map(Some)
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins. A template error (including `raise_exception`, and a rendering that
    /// exceeds [`RENDER_FUEL`]) is returned with its message and location.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| template_error(&self.origin, &e))?;
        let mut ctx: std::collections::BTreeMap<String, Value> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        ctx.insert("messages".into(), Value::from(Serde(messages)));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        template
            .render(Value::from(Serde(&ctx)))
            .map_err(|e| template_error(&self.origin, &e))
    }
}

fn template_error(origin: &str, e: &minijinja::Error) -> Error {
    let mut reason = e.to_string();
    if e.kind() == ErrorKind::OutOfFuel {
        reason.push_str(&format!(
            " (a rendering may do {RENDER_FUEL} units of work: this template loops or builds \
             text without bound)"
        ));
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        reason.push_str(": ");
        reason.push_str(&inner.to_string());
        source = inner.source();
    }
    Error::ChatTemplate {
        origin: origin.to_string(),
        reason,
    }
}

/// The widest indent `tojson` writes: the indent is repeated before the filter's output is
/// charged as fuel, so its width is bounded apart.
const MAX_TOJSON_INDENT: usize = 64;

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`,
/// so `", "` and `": "` separate items (`","` when indenting).
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    if indent.is_some_and(|n| n > MAX_TOJSON_INDENT) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: indent is at most {MAX_TOJSON_INDENT}"),
        ));
    }
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_python_json(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_python_json(
    v: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    let string = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String => out.push_str(&string(v.as_str().unwrap_or_default())),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_python_json(item, indent, sort_keys, depth + 1, out)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&string(&key.to_string()));
                out.push_str(": ");
                write_python_json(&v.get_item(key)?, indent, sort_keys, depth + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a {} value", v.kind()),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_python_semantics() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}",
            "test",
            vec![("bos_token".into(), "<s>".into())],
        )
        .unwrap();
        let out = t.render(&[Message::new("user", "  hi  ")], true).unwrap();
        assert_eq!(out, "<s>user: hi\nassistant:");
    }

    #[test]
    fn tojson_matches_json_dumps() {
        let t = ChatTemplate::new("{{ messages | tojson }}", "test", vec![]).unwrap();
        let out = t.render(&[Message::new("user", "é <b>")], false).unwrap();
        assert_eq!(out, r#"[{"role": "user", "content": "é <b>"}]"#);
    }

    #[test]
    fn errors_show_the_template_message() {
        let t = ChatTemplate::new(
            "{{ raise_exception('Conversation roles must alternate') }}",
            "tokenizer_config.json",
            vec![],
        )
        .unwrap();
        let err = t.render(&[], true).unwrap_err().to_string();
        assert!(err.contains("Conversation roles must alternate"), "{err}");
        assert!(err.contains("tokenizer_config.json"), "{err}");
        let err = ChatTemplate::new("{% for %}", "bad.jinja", vec![]).unwrap_err();
        assert!(err.to_string().contains("bad.jinja"), "{err}");
    }

    /// Templates written to exhaust memory or time: every one ends in an error naming the
    /// template, in bounded time.
    #[test]
    fn hostile_templates_are_cut_off() {
        let hostile = [
            // nested loops: 10^15 iterations
            "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}x{% endfor %}{% endfor %}{% endfor %}",
            // a string doubled 40 times: a terabyte
            "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
            // doubling through recursion, never printed
            "{% macro f(s, n) %}{% if n > 0 %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ f('xxxxxxxx', 60) }}",
            // repetition operators
            "{{ ('x' * 100000) * 100000 }}",
            "{{ (range(100000) | list) * 100000 }}",
            // unbounded recursion
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            "{{ messages | tojson(indent=1000000000) }}",
            // the messages joined into themselves
            "{% set ns = namespace(s=messages[0].content) %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        ];
        for source in hostile {
            let t = ChatTemplate::new(source, "hostile.jinja", vec![]).unwrap();
            let started = std::time::Instant::now();
            let err = t
                .render(&[Message::new("user", "hello there")], true)
                .unwrap_err()
                .to_string();
            let took = started.elapsed();
            assert!(err.contains("hostile.jinja"), "{source}: {err}");
            assert!(took.as_secs_f64() < 5.0, "{source}: {took:?}");
        }
    }

    /// A legitimate template on a large conversation stays well inside the budget.
    #[test]
    fn large_conversations_render() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            "test",
            vec![],
        )
        .unwrap();
        let long = "word ".repeat(400_000);
        let messages: Vec<Message> = (0..1000)
            .map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, "short turn"))
            .chain([Message::new("user", long.clone())])
            .collect();
        let out = t.render(&messages, true).unwrap();
        assert!(out.len() > long.len());
    }
}
