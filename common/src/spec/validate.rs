//! Rules that relate stages to each other: unique names, `needs` that name real stages and
//! form no cycle, gates that read only upstream stages, and `on_failure: rollback` only below
//! a deploying stage, and `monitor` only below a deploying stage (on a stage that does not
//! deploy itself). Runs after `convert`, so every field already has the right type.

use std::collections::{BTreeSet, HashMap};

use super::convert::{Fail, R, StageIds};
use super::types::{OnFailure, PipelineSpec};

/// A failure whose message mentions another node's line; `parse` fills that line in.
pub(crate) struct Pending {
    pub fail: Fail,
    /// Replace `{line}` in the message with the line of this node.
    pub other: Option<usize>,
}

impl From<Fail> for Pending {
    fn from(fail: Fail) -> Self {
        Pending { fail, other: None }
    }
}

fn fail(node: usize, field: String, message: impl Into<String>) -> Pending {
    Fail {
        node,
        field,
        message: message.into(),
    }
    .into()
}

/// Checks the cross-stage rules, first failure first.
pub(crate) fn validate(spec: &PipelineSpec, ids: &[StageIds]) -> Result<(), Pending> {
    let index = unique_names(spec, ids)?;
    needs_exist(spec, ids, &index)?;
    no_cycles(spec, ids, &index)?;
    gates_read_upstream(spec, ids, &index)?;
    rollback_has_deploy(spec, ids, &index)?;
    monitor_watches_deploy(spec, ids, &index)?;
    Ok(())
}

fn unique_names<'a>(
    spec: &'a PipelineSpec,
    ids: &[StageIds],
) -> Result<HashMap<&'a str, usize>, Pending> {
    let mut index = HashMap::with_capacity(spec.stages.len());
    for (i, stage) in spec.stages.iter().enumerate() {
        if let Some(&first) = index.get(stage.name.as_str()) {
            let first: usize = first;
            return Err(Pending {
                fail: Fail {
                    node: ids[i].name,
                    field: format!("stages[{i}].name"),
                    message: format!(
                        "duplicate stage name `{}` (first used by stages[{first}] at line {{line}})",
                        stage.name
                    ),
                },
                other: Some(ids[first].name),
            });
        }
        index.insert(stage.name.as_str(), i);
    }
    Ok(index)
}

fn needs_exist(spec: &PipelineSpec, ids: &[StageIds], index: &HashMap<&str, usize>) -> R<()> {
    for (i, stage) in spec.stages.iter().enumerate() {
        for (j, need) in stage.needs.iter().enumerate() {
            let field = format!("stages[{i}].needs[{j}]");
            if *need == stage.name {
                return Err(Fail {
                    node: ids[i].needs[j],
                    field,
                    message: format!("stage `{need}` cannot need itself"),
                });
            }
            if !index.contains_key(need.as_str()) {
                return Err(Fail {
                    node: ids[i].needs[j],
                    field,
                    message: format!("no stage is named `{need}`"),
                });
            }
        }
    }
    Ok(())
}

/// Depth-first search in file order; the first back edge found closes the reported cycle.
fn no_cycles(spec: &PipelineSpec, ids: &[StageIds], index: &HashMap<&str, usize>) -> R<()> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let n = spec.stages.len();
    let mut mark = vec![Mark::New; n];
    for start in 0..n {
        if mark[start] != Mark::New {
            continue;
        }
        // Explicit stack of (stage, index of the next need to look at): the current path.
        let mut stack = vec![(start, 0usize)];
        mark[start] = Mark::OnPath;
        while let Some(top) = stack.last_mut() {
            let (stage, j) = *top;
            let needs = &spec.stages[stage].needs;
            if j == needs.len() {
                mark[stage] = Mark::Done;
                stack.pop();
                continue;
            }
            top.1 += 1;
            let Some(&dep) = index.get(needs[j].as_str()) else {
                continue;
            };
            match mark[dep] {
                Mark::New => {
                    mark[dep] = Mark::OnPath;
                    stack.push((dep, 0));
                }
                Mark::OnPath => {
                    let from = stack.iter().position(|(s, _)| *s == dep).unwrap_or(0);
                    let mut names: Vec<&str> = stack[from..]
                        .iter()
                        .map(|(s, _)| spec.stages[*s].name.as_str())
                        .collect();
                    names.push(spec.stages[dep].name.as_str());
                    return Err(Fail {
                        node: ids[stage].needs[j],
                        field: format!("stages[{stage}].needs[{j}]"),
                        message: format!(
                            "dependency cycle: {} (each stage needs the next)",
                            names.join(" -> ")
                        ),
                    });
                }
                Mark::Done => {}
            }
        }
    }
    Ok(())
}

/// The stages `stage` needs directly or transitively (iterative; safe on long chains).
fn upstream_of(stage: usize, spec: &PipelineSpec, index: &HashMap<&str, usize>) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![stage];
    while let Some(s) = todo.pop() {
        for need in &spec.stages[s].needs {
            if let Some(&dep) = index.get(need.as_str())
                && seen.insert(dep)
            {
                todo.push(dep);
            }
        }
    }
    seen
}

fn gates_read_upstream(
    spec: &PipelineSpec,
    ids: &[StageIds],
    index: &HashMap<&str, usize>,
) -> Result<(), Pending> {
    let check = |i: usize,
                 upstream: &BTreeSet<usize>,
                 from: &str,
                 node: usize,
                 field: String|
     -> Result<(), Pending> {
        let gated = &spec.stages[i].name;
        match index.get(from) {
            None => Err(fail(node, field, format!("no stage is named `{from}`"))),
            Some(&s) if s == i => Err(fail(
                node,
                field,
                format!("the gate of `{gated}` cannot read `{gated}` itself; it runs before it"),
            )),
            Some(&s) if !upstream.contains(&s) => Err(fail(
                node,
                field,
                format!(
                    "stage `{from}` is not upstream of `{gated}`; a gate reads only stages that \
                     `{gated}` needs, directly or through other stages"
                ),
            )),
            Some(_) => Ok(()),
        }
    };
    for (i, stage) in spec.stages.iter().enumerate() {
        let Some(gate) = &stage.gate else { continue };
        let upstream = upstream_of(i, spec, index);
        if let Some(tests) = &gate.tests {
            for (j, from) in tests.from.iter().enumerate() {
                let field = format!("stages[{i}].gate.tests.from[{j}]");
                check(i, &upstream, from, ids[i].tests_from[j], field)?;
            }
        }
        for (k, metric) in gate.metrics.iter().enumerate() {
            let field = format!("stages[{i}].gate.metrics[{k}].from");
            check(i, &upstream, &metric.from, ids[i].metric_from[k], field)?;
        }
    }
    Ok(())
}

fn rollback_has_deploy(
    spec: &PipelineSpec,
    ids: &[StageIds],
    index: &HashMap<&str, usize>,
) -> R<()> {
    for (i, stage) in spec.stages.iter().enumerate() {
        if stage.on_failure != OnFailure::Rollback {
            continue;
        }
        let deploys = upstream_of(i, spec, index)
            .iter()
            .any(|&s| spec.stages[s].environment.is_some());
        if !deploys {
            return Err(Fail {
                node: ids[i].on_failure.unwrap_or(ids[i].name),
                field: format!("stages[{i}].on_failure"),
                message: format!(
                    "`rollback` needs a stage upstream of `{}` that deploys to an environment",
                    stage.name
                ),
            });
        }
    }
    Ok(())
}

/// A monitoring stage watches what an upstream stage deployed; it deploys nothing itself.
fn monitor_watches_deploy(
    spec: &PipelineSpec,
    ids: &[StageIds],
    index: &HashMap<&str, usize>,
) -> R<()> {
    for (i, stage) in spec.stages.iter().enumerate() {
        let (Some(_), Some(node)) = (&stage.monitor, ids[i].monitor) else {
            continue;
        };
        let field = format!("stages[{i}].monitor");
        if stage.environment.is_some() {
            return Err(Fail {
                node,
                field,
                message: format!(
                    "a monitoring stage watches a deployment and cannot deploy itself; move \
                     `environment` to a stage that `{}` needs",
                    stage.name
                ),
            });
        }
        let deploys = upstream_of(i, spec, index)
            .iter()
            .any(|&s| spec.stages[s].environment.is_some());
        if !deploys {
            return Err(Fail {
                node,
                field,
                message: format!(
                    "`monitor` needs a stage upstream of `{}` that deploys to an environment",
                    stage.name
                ),
            });
        }
    }
    Ok(())
}
