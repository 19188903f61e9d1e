//! Turns the YAML tree into spec types, checking each field on its own: known field names,
//! types, name and path rules, durations and numeric ranges, and a stage's container options
//! (image reference, `image_pull`, `resources`, `network`, `user`, `docker`; the value rules
//! are in `container`), which are refused on a stage without an `image`. Rules that relate
//! stages to each other live in `validate`. Every failure names the node it is about so
//! `parse` can find the line, and the field as a path from the document root (see
//! `SpecError::field`).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::container::{
    self, MAX_CPUS, MAX_MEMORY_BYTES, MIN_CPUS, MIN_MEMORY_BYTES, describe_bytes,
};
use super::node::{Kind, Node};
use super::types::*;
use crate::duration::parse_duration_ms;
use crate::names::{is_valid_env_name, name_problem};

/// Largest `retries` accepted.
pub const MAX_RETRIES: u32 = 10;

/// A rejected field: the node to point at, its path and what is wrong.
#[derive(Debug)]
pub(crate) struct Fail {
    pub node: usize,
    pub field: String,
    pub message: String,
}

pub(crate) type R<T> = Result<T, Fail>;

pub(crate) fn fail(node: &Node, field: &str, message: impl Into<String>) -> Fail {
    Fail {
        node: node.id,
        field: if field.is_empty() {
            DOCUMENT.to_string()
        } else {
            field.to_string()
        },
        message: message.into(),
    }
}

/// The `field` of errors about the document as a whole.
pub(crate) const DOCUMENT: &str = "(document)";

/// Node ids of the values `validate` checks across stages (parallel to the spec's lists).
#[derive(Debug, Default)]
pub(crate) struct StageIds {
    pub name: usize,
    pub needs: Vec<usize>,
    pub tests_from: Vec<usize>,
    pub metric_from: Vec<usize>,
    pub on_failure: Option<usize>,
    /// The `monitor` key, when the stage has one.
    pub monitor: Option<usize>,
}

/// The converted spec plus what `parse` still has to fill in or check.
pub(crate) struct Converted {
    pub spec: PipelineSpec,
    pub stages: Vec<StageIds>,
    /// Env values written as numbers or booleans: (stage index or `None` for the top level,
    /// variable, node id). Their source text is fetched afterwards, so `1.10` stays `1.10`.
    pub raw_env: Vec<(Option<usize>, String, usize)>,
}

const TOP_FIELDS: &[&str] = &[
    "name",
    "source",
    "repository",
    "trigger",
    "concurrency",
    "on_new_run",
    "env",
    "stages",
];
const SOURCE_FIELDS: &[&str] = &["path"];
const STAGE_FIELDS: &[&str] = &[
    "name",
    "run",
    "needs",
    "labels",
    "image",
    "image_pull",
    "resources",
    "network",
    "user",
    "docker",
    "env",
    "timeout",
    "retries",
    "environment",
    "reports",
    "gate",
    "rollback",
    "on_failure",
    "artifacts",
    "monitor",
    "secrets",
];
/// Stage fields that configure the container, so need `image`.
const CONTAINER_FIELDS: &[&str] = &["image_pull", "resources", "network", "user", "docker"];
const MONITOR_FIELDS: &[&str] = &[
    "duration",
    "interval",
    "failure_threshold",
    "timeout",
    "command",
    "http",
];
const HTTP_FIELDS: &[&str] = &["url", "expect_status", "timeout"];
/// Largest `monitor.failure_threshold` accepted.
pub const MAX_FAILURE_THRESHOLD: u32 = 1000;
const RESOURCE_FIELDS: &[&str] = &["cpus", "memory"];
const REPORT_FIELDS: &[&str] = &["junit", "metrics"];
const GATE_FIELDS: &[&str] = &[
    "tests",
    "metrics",
    "approvals",
    "approvers",
    "approval_timeout",
];
const TESTS_FIELDS: &[&str] = &["from", "min_pass_rate"];
const METRIC_FIELDS: &[&str] = &["name", "from", "min", "max", "max_regression"];

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The entries of a mapping with string keys, refusing duplicates. YAML merge keys
/// (`<<: *defaults`, or a list of aliases) add the merged mappings' fields that the mapping
/// does not set itself; the first merged mapping wins.
fn entries<'a>(node: &'a Node, path: &str) -> R<Vec<(&'a str, &'a Node, &'a Node)>> {
    let Kind::Map(pairs) = &node.kind else {
        return Err(fail(
            node,
            path,
            format!("expected a mapping, found {}", node.kind.describe_value()),
        ));
    };
    let mut out: Vec<(&str, &Node, &Node)> = Vec::with_capacity(pairs.len());
    let mut seen = HashSet::with_capacity(pairs.len());
    let mut merges = Vec::new();
    for (key, value) in pairs {
        let Kind::Str(name) = &key.kind else {
            return Err(fail(
                key,
                path,
                format!(
                    "field names must be strings, found {}",
                    key.kind.describe_value()
                ),
            ));
        };
        if name == MERGE_KEY {
            merges.push(value);
            continue;
        }
        if !seen.insert(name.as_str()) {
            return Err(fail(
                key,
                &join(path, name),
                format!("`{name}` is set twice in this mapping"),
            ));
        }
        out.push((name.as_str(), key, value));
    }
    for merge in merges {
        let sources: Vec<&Node> = match &merge.kind {
            Kind::Map(_) => vec![merge],
            Kind::Seq(items) => items.iter().collect(),
            _ => Vec::new(),
        };
        if sources.is_empty() || sources.iter().any(|s| !matches!(s.kind, Kind::Map(_))) {
            return Err(fail(
                merge,
                &join(path, MERGE_KEY),
                "a merge key `<<` takes a mapping or a list of mappings",
            ));
        }
        for source in sources {
            for (name, key, value) in entries(source, path)? {
                if seen.insert(name) {
                    out.push((name, key, value));
                }
            }
        }
    }
    Ok(out)
}

/// YAML's merge key.
const MERGE_KEY: &str = "<<";

/// One field of a mapping: its key, value and path.
pub(crate) struct Field<'a> {
    pub key: &'a Node,
    pub value: &'a Node,
    pub path: String,
}

impl<'a> Field<'a> {
    /// The value's node, or the key's when the value is empty (an empty value has no line of
    /// its own).
    pub(crate) fn at(&self) -> &'a Node {
        if self.value.kind == Kind::Null {
            self.key
        } else {
            self.value
        }
    }

    pub(crate) fn fail(&self, message: impl Into<String>) -> Fail {
        fail(self.at(), &self.path, message)
    }

    pub(crate) fn expected(&self, what: &str) -> Fail {
        self.fail(format!(
            "expected {what}, found {}",
            self.value.kind.describe_value()
        ))
    }

    pub(crate) fn string(&self) -> R<&'a str> {
        match &self.value.kind {
            Kind::Str(s) => Ok(s),
            _ => Err(self.expected("a string")),
        }
    }

    pub(crate) fn non_empty(&self) -> R<String> {
        let s = self.string()?;
        if s.trim().is_empty() {
            return Err(self.fail("must not be empty"));
        }
        Ok(s.to_string())
    }

    pub(crate) fn name(&self) -> R<String> {
        let s = self.string()?;
        match name_problem(s) {
            Some(problem) => Err(self.fail(problem)),
            None => Ok(s.to_string()),
        }
    }

    pub(crate) fn path_value(&self, allow_absolute: bool) -> R<String> {
        let s = self.string()?;
        match path_problem(s, allow_absolute) {
            Some(problem) => Err(self.fail(problem)),
            None => Ok(s.to_string()),
        }
    }

    pub(crate) fn boolean(&self) -> R<bool> {
        match &self.value.kind {
            Kind::Bool(b) => Ok(*b),
            _ => Err(self.expected("`true` or `false`")),
        }
    }

    /// One of a fixed set of words, e.g. `network: host`.
    pub(crate) fn choice<T: Copy>(&self, options: &[(&str, T)]) -> R<T> {
        let found = match &self.value.kind {
            Kind::Str(s) => match options.iter().find(|(word, _)| word == s) {
                Some((_, value)) => return Ok(*value),
                None => format!("`{s}`"),
            },
            other => other.describe_value(),
        };
        let words: Vec<String> = options.iter().map(|(w, _)| format!("`{w}`")).collect();
        let expected = match words.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        Err(self.fail(format!("expected {expected}, found {found}")))
    }

    pub(crate) fn number(&self) -> R<f64> {
        let v = match &self.value.kind {
            Kind::Int(i) => *i as f64,
            Kind::Float(f) => *f,
            _ => return Err(self.expected("a number")),
        };
        if !v.is_finite() {
            return Err(self.fail("must be a finite number"));
        }
        Ok(v)
    }

    pub(crate) fn whole(&self, max: u32) -> R<u32> {
        let Kind::Int(i) = &self.value.kind else {
            return Err(self.expected("a whole number"));
        };
        if *i < 0 {
            return Err(self.fail(format!("must not be negative, found {i}")));
        }
        if *i > i128::from(max) {
            return Err(self.fail(format!("must be at most {max}, found {i}")));
        }
        u32::try_from(*i).map_err(|_| self.fail(format!("must be at most {max}, found {i}")))
    }

    /// A list of strings with each item's node, checked by `check`.
    pub(crate) fn strings(
        &self,
        check: impl Fn(&str) -> Option<String>,
    ) -> R<(Vec<String>, Vec<usize>)> {
        let Kind::Seq(items) = &self.value.kind else {
            return Err(self.expected("a list"));
        };
        let mut values: Vec<String> = Vec::with_capacity(items.len());
        let mut ids = Vec::with_capacity(items.len());
        let mut seen = HashSet::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.path);
            let Kind::Str(s) = &item.kind else {
                return Err(fail(
                    item,
                    &path,
                    format!("expected a string, found {}", item.kind.describe()),
                ));
            };
            if let Some(problem) = check(s) {
                return Err(fail(item, &path, problem));
            }
            if !seen.insert(s.as_str()) {
                return Err(fail(item, &path, format!("`{s}` is listed twice")));
            }
            values.push(s.clone());
            ids.push(item.id);
        }
        Ok((values, ids))
    }
}

/// The fields of a mapping, checked against the allowed names.
pub(crate) struct Fields<'a> {
    node: &'a Node,
    path: String,
    entries: Vec<(&'a str, &'a Node, &'a Node)>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(node: &'a Node, path: &str, allowed: &[&str]) -> R<Self> {
        let entries = entries(node, path)?;
        for (name, key, _) in &entries {
            if !allowed.contains(name) {
                return Err(fail(
                    key,
                    &join(path, name),
                    format!(
                        "unknown field `{name}`; allowed fields here: {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(Fields {
            node,
            path: path.to_string(),
            entries,
        })
    }

    pub(crate) fn get(&self, name: &str) -> Option<Field<'a>> {
        self.entries
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(n, key, value)| Field {
                key,
                value,
                path: join(&self.path, n),
            })
    }

    pub(crate) fn require(&self, name: &str) -> R<Field<'a>> {
        self.get(name)
            .ok_or_else(|| fail(self.node, &join(&self.path, name), "missing required field"))
    }
}

/// Why `path` is not acceptable, or `None`. Relative paths stay inside the workspace: no
/// `..` components, and no leading `/` unless `allow_absolute`.
pub(crate) fn path_problem(path: &str, allow_absolute: bool) -> Option<String> {
    if path.trim().is_empty() {
        return Some("path must not be empty".to_string());
    }
    if path.contains('\0') {
        return Some("path must not contain a NUL byte".to_string());
    }
    if !allow_absolute && path.starts_with('/') {
        return Some(format!(
            "`{path}` must be a relative path (inside the workspace)"
        ));
    }
    if path.split(['/', '\\']).any(|part| part == "..") {
        return Some(format!("`{path}` must not contain `..` components"));
    }
    None
}

/// Converts the whole document.
pub(crate) fn convert(root: &Node) -> R<Converted> {
    let top = Fields::new(root, "", TOP_FIELDS)?;
    let name = top.require("name")?.name()?;
    let source = match top.get("source") {
        Some(field) => Some(source(&field)?),
        None => None,
    };
    let repository = top
        .get("repository")
        .map(|f| super::triggers::repository(&f))
        .transpose()?;
    let trigger = match top.get("trigger") {
        Some(field) => super::triggers::trigger(&field, repository.as_deref())?,
        None => TriggerSpec::default(),
    };
    let concurrency = top
        .get("concurrency")
        .map(|f| super::triggers::concurrency(&f))
        .transpose()?;
    let on_new_run = match top.get("on_new_run") {
        Some(f) => f.choice(&[
            ("queue", OnNewRun::Queue),
            ("supersede", OnNewRun::Supersede),
        ])?,
        None => OnNewRun::Queue,
    };
    if let (Some(_), Some(src)) = (&repository, top.get("source")) {
        return Err(src.fail(
            "`source` and `repository` cannot both be set: the workspace is either a copy of \
             a directory or a checkout of the repository",
        ));
    }
    let mut raw_env = Vec::new();
    let env = match top.get("env") {
        Some(field) => env(&field, None, &mut raw_env)?,
        None => BTreeMap::new(),
    };
    let stages_field = top.require("stages")?;
    let Kind::Seq(items) = &stages_field.value.kind else {
        return Err(stages_field.expected("a list of stages"));
    };
    if items.is_empty() {
        return Err(stages_field.fail("a pipeline needs at least one stage"));
    }
    let mut stages = Vec::with_capacity(items.len());
    let mut ids = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let (stage, stage_ids) = stage(item, i, &mut raw_env)?;
        stages.push(stage);
        ids.push(stage_ids);
    }
    Ok(Converted {
        spec: PipelineSpec {
            name,
            source,
            env,
            stages,
            repository,
            trigger,
            concurrency,
            on_new_run,
        },
        stages: ids,
        raw_env,
    })
}

fn source(field: &Field) -> R<SourceSpec> {
    let fields = Fields::new(field.value, &field.path, SOURCE_FIELDS)?;
    let path = fields.require("path")?.path_value(true)?;
    Ok(SourceSpec { path })
}

fn env(
    field: &Field,
    stage: Option<usize>,
    raw_env: &mut Vec<(Option<usize>, String, usize)>,
) -> R<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (name, key, value) in entries(field.value, &field.path)? {
        let path = join(&field.path, name);
        if !is_valid_env_name(name) {
            return Err(fail(
                key,
                &path,
                format!(
                    "`{name}` is not a valid environment variable name (use letters, digits \
                     and `_`, not starting with a digit)"
                ),
            ));
        }
        let text = match &value.kind {
            Kind::Str(s) => s.clone(),
            Kind::Int(_) | Kind::Float(_) | Kind::Bool(_) => {
                raw_env.push((stage, name.to_string(), value.id));
                String::new()
            }
            other => {
                let at = if *other == Kind::Null { key } else { value };
                return Err(fail(
                    at,
                    &path,
                    format!(
                        "expected a string, number or boolean, found {}",
                        other.describe()
                    ),
                ));
            }
        };
        out.insert(name.to_string(), text);
    }
    Ok(out)
}

/// One item of `stages`: its fields checked against [`STAGE_FIELDS`], the image reference
/// and container options included (see [`container_spec`]), plus the node ids `validate` needs.
fn stage(
    node: &Node,
    index: usize,
    raw_env: &mut Vec<(Option<usize>, String, usize)>,
) -> R<(StageSpec, StageIds)> {
    let path = format!("stages[{index}]");
    let fields = Fields::new(node, &path, STAGE_FIELDS)?;
    let name_field = fields.require("name")?;
    let name = name_field.name()?;
    let mut ids = StageIds {
        name: name_field.at().id,
        ..StageIds::default()
    };
    let monitor = match fields.get("monitor") {
        Some(f) => {
            ids.monitor = Some(f.key.id);
            Some(monitor(&f)?)
        }
        None => None,
    };
    // A monitoring stage runs its checks instead of a script.
    let run = match (fields.get("run"), &monitor) {
        (Some(f), Some(_)) => {
            return Err(fail(
                f.key,
                &f.path,
                "a stage with `monitor` runs its health checks, not `run`; put the check in \
                 `monitor.command`",
            ));
        }
        (None, Some(_)) => String::new(),
        _ => fields.require("run")?.non_empty()?,
    };
    let needs = match fields.get("needs") {
        Some(f) => {
            let (needs, needs_ids) = f.strings(|_| None)?;
            ids.needs = needs_ids;
            needs
        }
        None => Vec::new(),
    };
    let labels = match fields.get("labels") {
        Some(f) => f.strings(label_problem)?.0,
        None => Vec::new(),
    };
    let image = fields.get("image").map(|f| image(&f)).transpose()?;
    let container = container_spec(&fields, image.is_some())?;
    let env = match fields.get("env") {
        Some(f) => env(&f, Some(index), raw_env)?,
        None => BTreeMap::new(),
    };
    let timeout_ms = fields.get("timeout").map(|f| timeout(&f)).transpose()?;
    let retries = match fields.get("retries") {
        Some(f) => f.whole(MAX_RETRIES)?,
        None => 0,
    };
    let environment = fields.get("environment").map(|f| f.name()).transpose()?;
    let reports = match fields.get("reports") {
        Some(f) => reports(&f)?,
        None => ReportsSpec::default(),
    };
    let gate = match fields.get("gate") {
        Some(f) => Some(gate(&f, &mut ids)?),
        None => None,
    };
    let rollback = fields.get("rollback").map(|f| f.non_empty()).transpose()?;
    let on_failure = match fields.get("on_failure") {
        Some(f) => {
            ids.on_failure = Some(f.at().id);
            on_failure(&f)?
        }
        None => OnFailure::Fail,
    };
    let artifacts = match fields.get("artifacts") {
        Some(f) => f.strings(|p| path_problem(p, false))?.0,
        None => Vec::new(),
    };
    let secrets = match fields.get("secrets") {
        Some(f) => f.strings(crate::secrets::name_problem)?.0,
        None => Vec::new(),
    };
    let stage = StageSpec {
        name,
        run,
        needs,
        labels,
        image,
        container,
        env,
        timeout_ms,
        retries,
        environment,
        reports,
        gate,
        rollback,
        on_failure,
        artifacts,
        monitor,
        secrets,
    };
    Ok((stage, ids))
}

/// `image:`, checked as a Docker image reference (see `container::image_problem`).
fn image(field: &Field) -> R<String> {
    let s = field.string()?;
    match container::image_problem(s) {
        Some(problem) => Err(field.fail(problem)),
        None => Ok(s.to_string()),
    }
}

/// The container options of a stage (its `image_pull`, `resources`, `network`, `user` and
/// `docker` fields); unset ones keep `ContainerSpec::default()`. Each is refused, at its key,
/// on a stage without an `image`, since a host process has no container to configure.
fn container_spec(fields: &Fields, has_image: bool) -> R<ContainerSpec> {
    if !has_image
        && let Some(name) = CONTAINER_FIELDS.iter().find(|n| fields.get(n).is_some())
        && let Some(field) = fields.get(name)
    {
        return Err(fail(
            field.key,
            &field.path,
            format!(
                "`{name}` applies only to stages with an `image` (without one the stage runs \
                 as a host process)"
            ),
        ));
    }
    let mut spec = ContainerSpec::default();
    if let Some(f) = fields.get("image_pull") {
        spec.image_pull = f.choice(&[
            ("never", ImagePull::Never),
            ("if-missing", ImagePull::IfMissing),
            ("always", ImagePull::Always),
        ])?;
    }
    if let Some(f) = fields.get("resources") {
        let resources = Fields::new(f.value, &f.path, RESOURCE_FIELDS)?;
        spec.cpus = resources.get("cpus").map(|f| cpus(&f)).transpose()?;
        spec.memory_bytes = resources.get("memory").map(|f| memory(&f)).transpose()?;
    }
    if let Some(f) = fields.get("network") {
        spec.network = f.choice(&[
            ("none", NetworkMode::None),
            ("bridge", NetworkMode::Bridge),
            ("host", NetworkMode::Host),
        ])?;
    }
    if let Some(f) = fields.get("user") {
        spec.user = Some(user(&f)?);
    }
    if let Some(f) = fields.get("docker") {
        spec.docker_socket = f.boolean()?;
    }
    Ok(spec)
}

/// `resources.cpus`: a number of cores (or a string holding one, as Compose files write it)
/// from [`MIN_CPUS`] to [`MAX_CPUS`].
fn cpus(field: &Field) -> R<f64> {
    let cpus = match &field.value.kind {
        Kind::Int(i) => *i as f64,
        Kind::Float(f) => *f,
        Kind::Str(s) => container::parse_cpus_text(s)
            .ok_or_else(|| field.expected("a number of CPU cores such as `2` or `0.5`"))?,
        _ => return Err(field.expected("a number of CPU cores such as `2` or `0.5`")),
    };
    if !cpus.is_finite() {
        return Err(field.fail("must be a finite number"));
    }
    if !(MIN_CPUS..=MAX_CPUS).contains(&cpus) {
        return Err(field.fail(format!(
            "must be between {MIN_CPUS} (the smallest CPU limit Docker applies) and \
             {MAX_CPUS}, found {cpus}"
        )));
    }
    Ok(cpus)
}

/// `resources.memory`: bytes as a whole number, or a size such as `256m` or `1.5g` (see
/// `container::parse_size`), from [`MIN_MEMORY_BYTES`] to [`MAX_MEMORY_BYTES`].
fn memory(field: &Field) -> R<u64> {
    let expected = "a size such as `256m` or `1.5g`, or a whole number of bytes";
    let bytes = match &field.value.kind {
        Kind::Int(i) if *i < 0 => {
            return Err(field.fail(format!("must not be negative, found {i}")));
        }
        Kind::Int(i) => u64::try_from(*i).unwrap_or(u64::MAX),
        Kind::Float(f) if *f < 0.0 => {
            return Err(field.fail(format!("must not be negative, found {f}")));
        }
        Kind::Float(f) if f.is_finite() && f.fract() == 0.0 => *f as u64,
        Kind::Str(s) => container::parse_size(s).map_err(|message| field.fail(message))?,
        _ => return Err(field.expected(expected)),
    };
    if bytes < MIN_MEMORY_BYTES {
        return Err(field.fail(format!(
            "must be at least {}, the smallest memory limit Docker accepts; found {}",
            describe_bytes(MIN_MEMORY_BYTES),
            describe_bytes(bytes)
        )));
    }
    if bytes > MAX_MEMORY_BYTES {
        return Err(field.fail(format!(
            "must be at most {}, found {}",
            describe_bytes(MAX_MEMORY_BYTES),
            describe_bytes(bytes)
        )));
    }
    Ok(bytes)
}

/// `user:`: a name or uid with an optional group (see `container::user_problem`); a bare
/// number such as `1000` is taken as a uid.
fn user(field: &Field) -> R<String> {
    let user = match &field.value.kind {
        Kind::Str(s) => s.clone(),
        Kind::Int(i) if *i >= 0 => i.to_string(),
        _ => return Err(field.expected("a user such as `1000:1000` or `app`")),
    };
    match container::user_problem(&user) {
        Some(problem) => Err(field.fail(problem)),
        None => Ok(user),
    }
}

fn label_problem(label: &str) -> Option<String> {
    if label.is_empty() {
        Some("a label must not be empty".to_string())
    } else if label.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some(format!("label `{label}` must not contain spaces"))
    } else {
        None
    }
}

fn timeout(field: &Field) -> R<u64> {
    let text = match &field.value.kind {
        Kind::Str(s) => s.as_str(),
        _ => return Err(field.expected("a duration such as `20m` or `1h30m`")),
    };
    let ms = parse_duration_ms(text).map_err(|message| field.fail(message))?;
    if ms == 0 {
        return Err(field.fail("timeout must be longer than zero"));
    }
    Ok(ms)
}

/// A positive duration such as `10s` (`what` names it in the error).
fn positive_duration(field: &Field, what: &str) -> R<u64> {
    let text = match &field.value.kind {
        Kind::Str(s) => s.as_str(),
        _ => return Err(field.expected("a duration such as `10s` or `2m`")),
    };
    let ms = parse_duration_ms(text).map_err(|message| field.fail(message))?;
    if ms == 0 {
        return Err(field.fail(format!("{what} must be longer than zero")));
    }
    Ok(ms)
}

/// `monitor:`: `duration` and `interval` (required), `failure_threshold` (default 3),
/// `timeout` of one check (default: the interval; for `http` it may sit inside `http`), and
/// exactly one of `command` or `http`.
fn monitor(field: &Field) -> R<MonitorSpec> {
    let fields = Fields::new(field.value, &field.path, MONITOR_FIELDS)?;
    let duration_field = fields.require("duration")?;
    let duration_ms = positive_duration(&duration_field, "duration")?;
    let interval_field = fields.require("interval")?;
    let interval_ms = positive_duration(&interval_field, "interval")?;
    if interval_ms > duration_ms {
        return Err(interval_field.fail(format!(
            "the interval ({}) is longer than the duration ({}); no second check would run",
            crate::duration::format_ms(interval_ms),
            crate::duration::format_ms(duration_ms)
        )));
    }
    let failure_threshold = match fields.get("failure_threshold") {
        Some(f) => {
            let n = f.whole(MAX_FAILURE_THRESHOLD)?;
            if n == 0 {
                return Err(f.fail("must be at least 1"));
            }
            n
        }
        None => 3,
    };
    let mut timeout_ms = match fields.get("timeout") {
        Some(f) => Some(positive_duration(&f, "timeout")?),
        None => None,
    };
    let probe = match (fields.get("command"), fields.get("http")) {
        (Some(_), Some(h)) => {
            return Err(fail(
                h.key,
                &h.path,
                "set either `command` or `http`, not both",
            ));
        }
        (Some(c), None) => Probe::Command {
            command: c.non_empty()?,
        },
        (None, Some(h)) => {
            let (probe, http_timeout) = http_probe(&h)?;
            if let Some((ms, f)) = http_timeout {
                if timeout_ms.is_some() {
                    return Err(
                        f.fail("set `timeout` once: in `http`, or on `monitor` (for any probe)")
                    );
                }
                timeout_ms = Some(ms);
            }
            probe
        }
        (None, None) => {
            return Err(fail(
                field.at(),
                &field.path,
                "a monitor needs a probe: `command` or `http`",
            ));
        }
    };
    Ok(MonitorSpec {
        duration_ms,
        interval_ms,
        failure_threshold,
        timeout_ms: timeout_ms.unwrap_or(interval_ms),
        probe,
    })
}

/// `monitor.http`: `url` (plain `http://host[:port][/path]`), `expect_status` (default 200) and
/// an optional `timeout` (returned with its field, which `monitor` may have to refuse).
fn http_probe<'a>(field: &Field<'a>) -> R<(Probe, Option<(u64, Field<'a>)>)> {
    let fields = Fields::new(field.value, &field.path, HTTP_FIELDS)?;
    let url_field = fields.require("url")?;
    let url = url_field.non_empty()?;
    if let Some(problem) = url_problem(&url) {
        return Err(url_field.fail(problem));
    }
    let expect_status = match fields.get("expect_status") {
        Some(f) => {
            let n = f.whole(599)?;
            if n < 100 {
                return Err(f.fail(format!("must be an HTTP status (100 to 599), found {n}")));
            }
            n as u16
        }
        None => 200,
    };
    let timeout = match fields.get("timeout") {
        Some(f) => Some((positive_duration(&f, "timeout")?, f)),
        None => None,
    };
    Ok((Probe::Http { url, expect_status }, timeout))
}

/// Why `url` is not a plain-HTTP URL the agent's probe can fetch, or `None`.
pub fn url_problem(url: &str) -> Option<String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Some(format!(
            "`{url}` must start with `http://` (the probe speaks plain HTTP/1.1)"
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Some(format!("`{url}` names no host"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!("`{url}` must not contain spaces"));
    }
    None
}

fn on_failure(field: &Field) -> R<OnFailure> {
    match field.string()? {
        "fail" => Ok(OnFailure::Fail),
        "rollback" => Ok(OnFailure::Rollback),
        other => Err(field.fail(format!("expected `fail` or `rollback`, found `{other}`"))),
    }
}

fn reports(field: &Field) -> R<ReportsSpec> {
    let fields = Fields::new(field.value, &field.path, REPORT_FIELDS)?;
    let path = |name: &str| fields.get(name).map(|f| f.path_value(false)).transpose();
    Ok(ReportsSpec {
        junit: path("junit")?,
        metrics: path("metrics")?,
    })
}

fn gate(field: &Field, ids: &mut StageIds) -> R<GateSpec> {
    let fields = Fields::new(field.value, &field.path, GATE_FIELDS)?;
    let tests = match fields.get("tests") {
        Some(f) => {
            let tests = Fields::new(f.value, &f.path, TESTS_FIELDS)?;
            let from_field = tests.require("from")?;
            let (from, from_ids) = from_field.strings(|_| None)?;
            if from.is_empty() {
                return Err(from_field.fail("list at least one stage"));
            }
            ids.tests_from = from_ids;
            let min_pass_rate = match tests.get("min_pass_rate") {
                Some(f) => {
                    let rate = f.number()?;
                    if !(0.0..=1.0).contains(&rate) {
                        return Err(f.fail(format!("must be between 0 and 1, found {rate}")));
                    }
                    rate
                }
                None => 1.0,
            };
            Some(TestsGate {
                from,
                min_pass_rate,
            })
        }
        None => None,
    };
    let metrics = match fields.get("metrics") {
        Some(f) => {
            let Kind::Seq(items) = &f.value.kind else {
                return Err(f.expected("a list of metric gates"));
            };
            let mut metrics = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let (metric, from_id) = metric_gate(item, &format!("{}[{i}]", f.path))?;
                metrics.push(metric);
                ids.metric_from.push(from_id);
            }
            metrics
        }
        None => Vec::new(),
    };
    let approvals = match fields.get("approvals") {
        Some(f) => f.whole(u32::MAX)?,
        None => 0,
    };
    let approvers = match fields.get("approvers") {
        Some(f) => f.strings(super::approver_problem)?.0,
        None => Vec::new(),
    };
    let approval_timeout_ms = fields
        .get("approval_timeout")
        .map(|f| positive_duration(&f, "approval_timeout"))
        .transpose()?;
    if approvals == 0
        && let Some(f) = fields
            .get("approvers")
            .or_else(|| fields.get("approval_timeout"))
    {
        return Err(f.fail("needs `approvals` of at least 1 (nobody is asked to approve)"));
    }
    Ok(GateSpec {
        tests,
        metrics,
        approvals,
        approvers,
        approval_timeout_ms,
    })
}

fn metric_gate(node: &Node, path: &str) -> R<(MetricGate, usize)> {
    let fields = Fields::new(node, path, METRIC_FIELDS)?;
    let name = fields.require("name")?.name()?;
    let from_field = fields.require("from")?;
    let from = from_field.string()?.to_string();
    let bound = |key: &str| fields.get(key).map(|f| f.number()).transpose();
    let min = bound("min")?;
    let max = bound("max")?;
    let max_regression = bound("max_regression")?;
    if min.is_none() && max.is_none() && max_regression.is_none() {
        return Err(fail(
            node,
            path,
            "a metric gate needs at least one of min, max or max_regression",
        ));
    }
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        return Err(fail(
            node,
            path,
            format!("min ({lo}) is greater than max ({hi})"),
        ));
    }
    if let (Some(f), Some(r)) = (fields.get("max_regression"), max_regression)
        && r < 0.0
    {
        return Err(f.fail(format!("must not be negative, found {r}")));
    }
    let metric = MetricGate {
        name,
        from,
        min,
        max,
        max_regression,
    };
    Ok((metric, from_field.at().id))
}

/// Ids of env values whose source text must be fetched.
pub(crate) fn raw_env_ids(converted: &Converted) -> BTreeSet<usize> {
    converted.raw_env.iter().map(|(_, _, id)| *id).collect()
}
