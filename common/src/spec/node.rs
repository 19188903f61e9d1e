//! A YAML document as a small tree whose nodes carry ids, built with `yaml_serde`.
//!
//! Why: `yaml_serde` reports a line only for errors it raises while deserializing, and its
//! `Value` has no positions. So every node gets an id in pre-order (the order the deserializer
//! visits it). To find a node's line, [`locate`] deserializes the same text again, counting
//! nodes the same way, and raises an error on the node with that id: `yaml_serde` stamps that
//! error with the node's mark, which is exactly the line we want. This costs one extra parse,
//! only when reporting an error.
//!
//! Aliases are expanded by the deserializer as it visits them; the builder charges every node
//! and every byte of scalar text against [`EXPANSION_LIMIT`], so an alias bomb stops after at
//! most that much work instead of exhausting memory. (`yaml_serde` by itself only caps alias
//! jumps at 100 per event, which still lets one large anchor be repeated into gigabytes.)

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};

/// Most nodes plus scalar bytes a document may expand to (four times the largest spec).
pub(crate) const EXPANSION_LIMIT: usize = 4 * super::MAX_SPEC_BYTES;

/// One YAML node; `id` is its pre-order position in the expanded document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub id: usize,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order; duplicate keys are kept (the converter rejects them).
    Map(Vec<(Node, Node)>),
}

impl Kind {
    /// What a user would call this kind of value, for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Null => "nothing (null)",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) | Kind::Float(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    /// Like `describe`, showing short scalar values: "the number 1.5", "the string `two`".
    pub fn describe_value(&self) -> String {
        match self {
            Kind::Bool(b) => format!("the boolean {b}"),
            Kind::Int(i) => format!("the number {i}"),
            Kind::Float(f) => format!("the number {f}"),
            Kind::Str(s) if s.chars().count() <= 40 && !s.contains(['\n', '`']) => {
                format!("the string `{s}`")
            }
            other => other.describe().to_string(),
        }
    }
}

/// Why the text could not be turned into a tree.
#[derive(Debug)]
pub(crate) struct BuildError {
    /// 1-based line, 0 if unknown.
    pub line: usize,
    /// The field, when the error is about one value rather than the document.
    pub field: Option<String>,
    pub message: String,
}

/// Message for a document that expands past [`EXPANSION_LIMIT`] (or past `yaml_serde`'s own
/// alias repetition limit).
pub(crate) fn alias_bomb_message() -> String {
    format!(
        "YAML aliases expand the document past {EXPANSION_LIMIT} nodes and text bytes; \
         refusing a possible alias bomb"
    )
}

/// Parses `yaml` (one document) into a tree.
pub(crate) fn build(yaml: &str) -> Result<Node, BuildError> {
    let ctx = Ctx::default();
    let result = Seed {
        ctx: &ctx,
        mode: &Mode::Build,
    }
    .deserialize(yaml_serde::Deserializer::from_str(yaml));
    let err = match result {
        Ok(Out::Node(node)) => return Ok(node),
        Ok(Out::Unit) => {
            return Err(BuildError {
                line: 0,
                field: None,
                message: "internal error: the YAML tree was not built".to_string(),
            });
        }
        Err(err) => err,
    };
    let text = err.to_string();
    let located = err.location().map(|l| l.line());
    // The last node started is where the deserializer was when it gave up; if it failed
    // before reaching that node's value (an alias over the limit), its parent or previous
    // sibling has a line.
    let started = ctx.next_id.get();
    let line_of_last = || {
        (started.saturating_sub(4)..started)
            .rev()
            .map(|id| locate(yaml, id))
            .find(|&line| line > 0)
            .unwrap_or(0)
    };
    if ctx.over_budget.get() || text.starts_with("repetition limit exceeded") {
        return Err(BuildError {
            line: located.unwrap_or_else(line_of_last),
            field: None,
            message: alias_bomb_message(),
        });
    }
    if text.starts_with("deserializing from YAML containing more than one document") {
        return Err(BuildError {
            line: second_document_line(yaml),
            field: None,
            message: "the file holds more than one YAML document (`---`); a pipeline file holds \
                      exactly one"
                .to_string(),
        });
    }
    if text.starts_with("recursion limit exceeded") {
        return Err(BuildError {
            line: located.unwrap_or_else(line_of_last),
            field: None,
            message: "the document nests deeper than 128 levels".to_string(),
        });
    }
    if ctx.tagged.get()
        && let Some(start) = text.find("YAML tags such as ")
    {
        // yaml_serde renders it as `[<path>: ]<our message> at line L column C`.
        let path = text[..start].strip_suffix(": ").filter(|p| !p.is_empty());
        let message = &text[start..];
        let message = message
            .rfind(" at line ")
            .map_or(message, |at| &message[..at]);
        return Err(BuildError {
            line: located.unwrap_or_else(line_of_last),
            field: path.map(str::to_string),
            message: message.to_string(),
        });
    }
    Err(BuildError {
        line: located.unwrap_or_else(line_of_last),
        field: None,
        message: format!("invalid YAML: {text}"),
    })
}

/// The line of the `---` that starts a second document, or 0 if it cannot be told. A `---`
/// at the start of a line is always a document marker; one before any content only opens the
/// first document.
fn second_document_line(yaml: &str) -> usize {
    let mut content_seen = false;
    for (i, line) in yaml.lines().enumerate() {
        let is_marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_marker && content_seen {
            return i + 1;
        }
        let trimmed = line.trim();
        if !trimmed.is_empty() && !trimmed.starts_with('#') {
            content_seen = true;
        }
    }
    0
}

/// The 1-based line of the node with `id` (for an alias, the line of its anchor). 0 if the
/// document no longer parses or has no such node.
pub(crate) fn locate(yaml: &str, id: usize) -> usize {
    let ctx = Ctx::default();
    let result = Seed {
        ctx: &ctx,
        mode: &Mode::Locate(id),
    }
    .deserialize(yaml_serde::Deserializer::from_str(yaml));
    match result {
        Err(err) if ctx.located.get() => err.location().map(|l| l.line()).unwrap_or(0),
        _ => 0,
    }
}

/// The source text of the scalars with these ids (`1.10` stays `1.10`, not `1.1`).
pub(crate) fn raw_scalars(yaml: &str, ids: &BTreeSet<usize>) -> BTreeMap<usize, String> {
    let ctx = Ctx::default();
    let mode = Mode::Raw {
        ids,
        out: RefCell::new(BTreeMap::new()),
    };
    let _ = Seed {
        ctx: &ctx,
        mode: &mode,
    }
    .deserialize(yaml_serde::Deserializer::from_str(yaml));
    match mode {
        Mode::Raw { out, .. } => out.into_inner(),
        _ => BTreeMap::new(),
    }
}

#[derive(Default)]
struct Ctx {
    next_id: Cell<usize>,
    spent: Cell<usize>,
    over_budget: Cell<bool>,
    tagged: Cell<bool>,
    located: Cell<bool>,
}

impl Ctx {
    fn charge<E: de::Error>(&self, units: usize) -> Result<(), E> {
        let spent = self.spent.get().saturating_add(units);
        self.spent.set(spent);
        if spent > EXPANSION_LIMIT {
            self.over_budget.set(true);
            return Err(E::custom(alias_bomb_message()));
        }
        Ok(())
    }
}

enum Mode<'a> {
    /// Build the tree.
    Build,
    /// Fail on the node with this id so the error carries its mark.
    Locate(usize),
    /// Collect the source text of these scalar ids.
    Raw {
        ids: &'a BTreeSet<usize>,
        out: RefCell<BTreeMap<usize, String>>,
    },
}

enum Out {
    Node(Node),
    Unit,
}

#[derive(Clone, Copy)]
struct Seed<'a> {
    ctx: &'a Ctx,
    mode: &'a Mode<'a>,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Out;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Out, D::Error> {
        let id = self.ctx.next_id.get();
        self.ctx.next_id.set(id + 1);
        match self.mode {
            Mode::Locate(target) if *target == id => {
                d.deserialize_any(FailVisitor { ctx: self.ctx })
            }
            Mode::Raw { ids, out } if ids.contains(&id) => {
                let text = d.deserialize_str(RawVisitor)?;
                out.borrow_mut().insert(id, text);
                Ok(Out::Unit)
            }
            _ => d.deserialize_any(NodeVisitor { seed: self, id }),
        }
    }
}

/// Builds (or, outside build mode, just walks) one node.
struct NodeVisitor<'a> {
    seed: Seed<'a>,
    id: usize,
}

impl NodeVisitor<'_> {
    fn leaf<E: de::Error>(&self, kind: Kind, bytes: usize) -> Result<Out, E> {
        if !matches!(self.seed.mode, Mode::Build) {
            return Ok(Out::Unit);
        }
        self.seed.ctx.charge(1 + bytes)?;
        Ok(Out::Node(Node { id: self.id, kind }))
    }

    fn child(out: Out) -> Option<Node> {
        match out {
            Out::Node(node) => Some(node),
            Out::Unit => None,
        }
    }
}

impl<'de> Visitor<'de> for NodeVisitor<'_> {
    type Value = Out;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Out, E> {
        self.leaf(Kind::Bool(v), 0)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Out, E> {
        self.leaf(Kind::Int(v.into()), 0)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Out, E> {
        self.leaf(Kind::Int(v.into()), 0)
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Out, E> {
        self.leaf(Kind::Int(v), 0)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Out, E> {
        match i128::try_from(v) {
            Ok(v) => self.leaf(Kind::Int(v), 0),
            Err(_) => self.leaf(Kind::Float(v as f64), 0),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Out, E> {
        self.leaf(Kind::Float(v), 0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Out, E> {
        if !matches!(self.seed.mode, Mode::Build) {
            return Ok(Out::Unit);
        }
        // Charge before copying, so a huge expanded string is refused before it is built.
        self.seed.ctx.charge(1 + v.len())?;
        Ok(Out::Node(Node {
            id: self.id,
            kind: Kind::Str(v.to_string()),
        }))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Out, E> {
        self.leaf(Kind::Null, 0)
    }

    fn visit_none<E: de::Error>(self) -> Result<Out, E> {
        self.leaf(Kind::Null, 0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Out, A::Error> {
        let build = matches!(self.seed.mode, Mode::Build);
        if build {
            self.seed.ctx.charge(1)?;
        }
        let mut items = Vec::new();
        while let Some(out) = seq.next_element_seed(self.seed)? {
            items.extend(Self::child(out));
        }
        Ok(if build {
            Out::Node(Node {
                id: self.id,
                kind: Kind::Seq(items),
            })
        } else {
            Out::Unit
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Out, A::Error> {
        let build = matches!(self.seed.mode, Mode::Build);
        if build {
            self.seed.ctx.charge(1)?;
        }
        let mut entries = Vec::new();
        while let Some(key) = map.next_key_seed(self.seed)? {
            let value = map.next_value_seed(self.seed)?;
            if let (Some(k), Some(v)) = (Self::child(key), Self::child(value)) {
                entries.push((k, v));
            }
        }
        Ok(if build {
            Out::Node(Node {
                id: self.id,
                kind: Kind::Map(entries),
            })
        } else {
            Out::Unit
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Out, A::Error> {
        let (tag, _) = data.variant::<String>()?;
        self.seed.ctx.tagged.set(true);
        Err(de::Error::custom(tag_message(&tag)))
    }
}

fn tag_message(tag: &str) -> String {
    format!("YAML tags such as `!{tag}` are not supported in pipeline files")
}

/// Fails on whatever it is given; the deserializer stamps the error with the node's mark.
struct FailVisitor<'a> {
    ctx: &'a Ctx,
}

const LOCATED: &str = "located";

impl FailVisitor<'_> {
    fn hit<E: de::Error>(&self) -> Result<Out, E> {
        self.ctx.located.set(true);
        Err(E::custom(LOCATED))
    }
}

impl<'de> Visitor<'de> for FailVisitor<'_> {
    type Value = Out;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(LOCATED)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Out, E> {
        self.hit()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Out, E> {
        self.hit()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Out, E> {
        self.hit()
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Out, E> {
        self.hit()
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Out, E> {
        self.hit()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Out, E> {
        self.hit()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Out, E> {
        self.hit()
    }
    fn visit_unit<E: de::Error>(self) -> Result<Out, E> {
        self.hit()
    }
    fn visit_none<E: de::Error>(self) -> Result<Out, E> {
        self.hit()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Out, A::Error> {
        self.hit()
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Out, A::Error> {
        self.hit()
    }
    fn visit_enum<A: EnumAccess<'de>>(self, _: A) -> Result<Out, A::Error> {
        self.hit()
    }
}

/// Takes a scalar's source text as is.
struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a scalar")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(node: &Node, out: &mut Vec<usize>) {
        out.push(node.id);
        match &node.kind {
            Kind::Seq(items) => items.iter().for_each(|n| ids(n, out)),
            Kind::Map(entries) => entries.iter().for_each(|(k, v)| {
                ids(k, out);
                ids(v, out);
            }),
            _ => {}
        }
    }

    #[test]
    fn ids_are_preorder_and_locate_finds_lines() {
        let yaml = "a: 1\nb:\n  - x\n  - y: 2.5\nc: true\n";
        let root = build(yaml).expect("parses");
        let mut seen = Vec::new();
        ids(&root, &mut seen);
        assert_eq!(seen, (0..seen.len()).collect::<Vec<_>>());
        // 0 root, 1 a, 2 1, 3 b, 4 seq, 5 x, 6 map, 7 y, 8 2.5, 9 c, 10 true
        let lines: Vec<usize> = (0..=10).map(|id| locate(yaml, id)).collect();
        assert_eq!(lines, [1, 1, 1, 2, 3, 3, 4, 4, 4, 5, 5]);
    }

    #[test]
    fn raw_keeps_number_text() {
        let yaml = "a: 1.10\nb: 0x1F\nc: true\n";
        let raw = raw_scalars(yaml, &[2, 4, 6].into_iter().collect());
        assert_eq!(raw[&2], "1.10");
        assert_eq!(raw[&4], "0x1F");
        assert_eq!(raw[&6], "true");
    }

    #[test]
    fn tags_are_refused() {
        let err = build("a: !foo 1\n").expect_err("tag");
        assert!(err.message.contains("tags"), "{}", err.message);
        assert_eq!(err.line, 1);
    }
}
