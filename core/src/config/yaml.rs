//! Reading the pipeline text: `${VAR}` substitution, YAML parsing with
//! `deny_unknown_fields`, and error messages that name the key and its line.

use std::path::Path;

use serde_json::Value as Json;

use super::*;

/// Replace `${VAR}` (and `${VAR:-default}`) with environment values; `$$`
/// is a literal `$`. Returns every unset variable as an error.
pub fn substitute_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut errs = Vec::new();
    let mut rest = text;
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            match body.find('}') {
                Some(end) => {
                    let expr = &body[..end];
                    let (name, default) = match expr.split_once(":-") {
                        Some((n, d)) => (n, Some(d)),
                        None => (expr, None),
                    };
                    let offset = text.len() - rest.len() + i;
                    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        errs.push(format!("line {}: ${{{expr}}} is not a valid variable reference", line_of(offset)));
                    } else {
                        match lookup(name).or_else(|| default.map(str::to_string)) {
                            Some(v) => out.push_str(&v),
                            None => errs.push(format!(
                                "line {}: environment variable {name} is not set (referenced as ${{{name}}})",
                                line_of(offset)
                            )),
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    let offset = text.len() - rest.len() + i;
                    errs.push(format!("line {}: unterminated ${{ (missing '}}')", line_of(offset)));
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

/// A YAML mapping, as parsed.
type Mapping = serde_json::Map<String, Json>;

/// Read `T` from a parsed node, taking a null where a list, mapping or
/// struct is expected as an empty one (`exclude:` or `snapshot:` with
/// nothing under it), at any depth, as YAML readers do.
fn from_node<T: serde::de::DeserializeOwned>(v: Json) -> Result<T, serde_json::Error> {
    T::deserialize(Node(v))
}

/// A parsed YAML node (see [`from_node`]).
struct Node(Json);

impl<'de> serde::de::IntoDeserializer<'de, serde_json::Error> for Node {
    type Deserializer = Node;
    fn into_deserializer(self) -> Node {
        self
    }
}

impl Node {
    fn empty_seq<'de, V: serde::de::Visitor<'de>>(v: V) -> Result<V::Value, serde_json::Error> {
        v.visit_seq(serde::de::value::SeqDeserializer::new(std::iter::empty::<Node>()))
    }
    fn empty_map<'de, V: serde::de::Visitor<'de>>(v: V) -> Result<V::Value, serde_json::Error> {
        v.visit_map(serde::de::value::MapDeserializer::new(std::iter::empty::<(String, Node)>()))
    }
}

impl<'de> serde::Deserializer<'de> for Node {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Json::Array(items) => v.visit_seq(serde::de::value::SeqDeserializer::new(items.into_iter().map(Node))),
            Json::Object(map) => {
                v.visit_map(serde::de::value::MapDeserializer::new(map.into_iter().map(|(k, x)| (k, Node(x)))))
            }
            other => serde::Deserializer::deserialize_any(other, v),
        }
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Json::Null => v.visit_none(),
            other => v.visit_some(Node(other)),
        }
    }

    fn deserialize_seq<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Json::Null => Self::empty_seq(v),
            other => Node(other).deserialize_any(v),
        }
    }

    fn deserialize_map<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Json::Null => Self::empty_map(v),
            other => Node(other).deserialize_any(v),
        }
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_map(v)
    }

    fn deserialize_newtype_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Self::Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Json::String(s) => v.visit_enum(serde::de::IntoDeserializer::<serde_json::Error>::into_deserializer(s)),
            other => serde::Deserializer::deserialize_enum(other, name, variants, v),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple tuple_struct identifier ignored_any
    }
}

/// The YAML document as a tree of plain data (mappings with text keys,
/// sequences and scalars: all a pipeline file holds), parsed by
/// `serde-saphyr` (panic-free, with limits on aliases and nesting). Sections
/// are then read from the tree one by one, so that one bad section does not
/// hide the others. A syntax error names its line and column.
fn parse_yaml(text: &str) -> Result<Json, String> {
    if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        return Ok(Json::Null);
    }
    let mut options = serde_saphyr::Options::default();
    // As YAML 1.2 (and serde_yaml before) read plain scalars: `yes`, `on`,
    // `0755` and `1_000` stay text.
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.underscored_numbers_as_strings = true;
    // One line per problem: the message names the line and column.
    options.with_snippet = false;
    serde_saphyr::from_str_with_options::<Json>(text, options).map_err(|e| {
        // The parser's advice on duplicate keys is for programmers.
        let msg = e.to_string().replace(", set DuplicateKeyPolicy in Options if acceptable", "");
        format!("YAML syntax: {msg}")
    })
}

/// Find the line of `key:` below the top-level `section:` (for messages).
fn locate_key(text: &str, section: Option<&str>, key: &str) -> Option<usize> {
    let mut in_section = section.is_none();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(sec) = section {
            if indent == 0 && !trimmed.is_empty() && !trimmed.starts_with('#') {
                in_section = trimmed.starts_with(&format!("{sec}:"));
                continue;
            }
        }
        if in_section {
            let t = trimmed.trim_start_matches("- ");
            if t.starts_with(&format!("{key}:")) || t.starts_with(&format!("\"{key}\":")) {
                return Some(i + 1);
            }
        }
    }
    None
}

fn describe_serde_error(text: &str, section: Option<&str>, e: &serde_json::Error) -> String {
    let mut msg = e.to_string();
    // A section is read from the parsed tree, which has no locations: add
    // the line of an unknown key from the text.
    if let Some(start) = msg.find("unknown field `") {
        let rest = &msg[start + 15..];
        if let Some(end) = rest.find('`') {
            let key = rest[..end].to_string();
            if let Some(line) = locate_key(text, section, &key) {
                msg = format!("{msg} (line {line})");
            }
        }
    }
    match section {
        Some(s) => format!("{s}: {msg}"),
        None => msg,
    }
}

/// The `transforms:` list, item by item (each error names its item).
fn parse_transforms(map: &Mapping, text: &str, errors: &mut Vec<String>) -> Vec<TransformConfig> {
    const KINDS: &str = "filter, columns, mask, rename, ops";
    let Some(v) = map.get("transforms") else { return Vec::new() };
    let items = match v {
        Json::Null => return Vec::new(),
        Json::Array(s) => s,
        _ => {
            errors.push(format!("transforms: must be a list of steps (- filter: ..., - mask: ...; kinds: {KINDS})"));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let (kind, body) = match item {
            Json::Object(m) if m.len() == 1 => {
                let (k, v) = m.iter().next().expect("one entry");
                (k.as_str(), v.clone())
            }
            _ => {
                errors.push(format!("transforms[{i}]: each step is a one-key mapping naming its kind ({KINDS})"));
                continue;
            }
        };
        if !["filter", "columns", "mask", "rename", "ops"].contains(&kind) {
            errors.push(format!("transforms[{i}]: unknown kind `{kind}`; expected one of {KINDS}"));
            continue;
        }
        fn body_of<T: serde::de::DeserializeOwned>(v: Json) -> Result<T, serde_json::Error> {
            // `- ops:` with nothing under it is an empty mapping, not null.
            let v = if v.is_null() { Json::Object(Default::default()) } else { v };
            from_node(v)
        }
        let parsed = match kind {
            "filter" => body_of(body).map(TransformConfig::Filter),
            "columns" => body_of(body).map(TransformConfig::Columns),
            "mask" => body_of(body).map(TransformConfig::Mask),
            "rename" => body_of(body).map(TransformConfig::Rename),
            _ => body_of(body).map(TransformConfig::Ops),
        };
        match parsed {
            Ok(t) => out.push(t),
            Err(e) => {
                let msg = describe_serde_error(text, None, &e);
                errors.push(format!("transforms[{i}].{kind}: {msg}"));
            }
        }
    }
    out
}

/// Parse pipeline text (after substitution) into a config, reporting every
/// structural and semantic problem at once.
pub fn parse_pipeline_text(text: &str, file: &str) -> Result<PipelineConfig, ConfigError> {
    parse_pipeline_text_with(text, file, |k| std::env::var(k).ok())
}

/// As [`parse_pipeline_text`], with `${VAR}` looked up by `lookup`.
pub fn parse_pipeline_text_with(
    text: &str,
    file: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<PipelineConfig, ConfigError> {
    let err = |errors: Vec<String>| ConfigError { file: file.to_string(), errors };
    let substituted = substitute_env(text, lookup).map_err(err)?;
    let doc = parse_yaml(&substituted).map_err(|e| err(vec![e]))?;
    let map = match doc {
        Json::Object(m) => m,
        Json::Null => return Err(err(vec!["the file is empty".into()])),
        _ => return Err(err(vec!["the top level must be a mapping of keys (version, name, source, ...)".into()])),
    };
    // Section by section, so that one bad section doesn't hide the others.
    let mut errors = Vec::new();
    const KNOWN: [&str; 8] = ["version", "name", "source", "tables", "snapshot", "sink", "checkpoint", "transforms"];
    // In file order (the parsed mapping is sorted by key).
    let mut unknown: Vec<(Option<usize>, &str)> = map
        .keys()
        .map(String::as_str)
        .filter(|k| !KNOWN.contains(k))
        .map(|k| (locate_key(&substituted, None, k), k))
        .collect();
    unknown.sort();
    for (line, key) in unknown {
        let line = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        errors.push(format!("unknown key `{key}`{line}; expected one of {}", KNOWN.join(", ")));
    }
    for required in ["version", "name", "source", "tables", "sink"] {
        if !map.contains_key(required) {
            errors.push(format!("missing required key `{required}`"));
        }
    }
    fn section<T: serde::de::DeserializeOwned>(
        map: &Mapping,
        key: &str,
        text: &str,
        errors: &mut Vec<String>,
    ) -> Option<T> {
        let v = map.get(key)?;
        match from_node::<T>(v.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(describe_serde_error(text, Some(key), &e));
                None
            }
        }
    }
    let version: Option<u32> = section(&map, "version", &substituted, &mut errors);
    let name: Option<String> = section(&map, "name", &substituted, &mut errors);
    let source: Option<SourceConfig> = section(&map, "source", &substituted, &mut errors);
    let tables: Option<TablesConfig> = section(&map, "tables", &substituted, &mut errors);
    let snapshot: Option<SnapshotConfig> = section(&map, "snapshot", &substituted, &mut errors);
    let sink: Option<SinkConfig> = section(&map, "sink", &substituted, &mut errors);
    let checkpoint: Option<CheckpointConfig> = section(&map, "checkpoint", &substituted, &mut errors);
    let transforms = parse_transforms(&map, &substituted, &mut errors);
    if !errors.is_empty() {
        return Err(err(errors));
    }
    let cfg = PipelineConfig {
        version: version.expect("checked"),
        name: name.expect("checked"),
        source: source.expect("checked"),
        tables: tables.expect("checked"),
        snapshot: snapshot.unwrap_or_default(),
        sink: sink.expect("checked"),
        checkpoint: checkpoint.unwrap_or_default(),
        transforms,
    };
    let errors = cfg.validate();
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(err(errors))
    }
}

/// Read and parse a pipeline file.
pub fn load_pipeline(path: &Path) -> Result<PipelineConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError { file: file.clone(), errors: vec![format!("cannot read the file: {e}")] })?;
    parse_pipeline_text(&text, &file)
}
