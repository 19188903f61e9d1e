//! The figures each measurement returns, gathered over repetitions and printed as one
//! Markdown table with the machine and the command that produced it.

use std::path::Path;
use std::process::Command;

use super::stats::Spread;

/// One figure of one repetition.
#[derive(Debug, Clone)]
pub struct Value {
    pub name: String,
    pub unit: &'static str,
    pub value: f64,
}

impl Value {
    pub fn new(name: impl Into<String>, unit: &'static str, value: f64) -> Value {
        Value {
            name: name.into(),
            unit,
            value,
        }
    }
}

/// Every figure in the order first seen, with its value in each repetition.
#[derive(Default)]
pub struct Table {
    rows: Vec<(String, &'static str, Vec<f64>)>,
}

impl Table {
    pub fn add(&mut self, values: &[Value]) {
        for v in values {
            match self.rows.iter_mut().find(|(name, _, _)| *name == v.name) {
                Some((_, _, all)) => all.push(v.value),
                None => self.rows.push((v.name.clone(), v.unit, vec![v.value])),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The spread over repetitions of figure `name`, if it was measured.
    pub fn spread(&self, name: &str) -> Option<Spread> {
        self.rows
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, values)| Spread::of(values))
    }

    /// The Markdown table: median over repetitions, min..max, and every repetition's value.
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| figure | unit | median | min..max | each repetition |\n|---|---|---:|---:|---|\n",
        );
        for (name, unit, values) in &self.rows {
            let spread = Spread::of(values);
            let each: Vec<String> = values.iter().map(|v| fmt(*v, unit)).collect();
            s.push_str(&format!(
                "| {name} | {unit} | {} | {}..{} | {} |\n",
                fmt(spread.median, unit),
                fmt(spread.min, unit),
                fmt(spread.max, unit),
                each.join(", ")
            ));
        }
        s
    }
}

/// Whole units, except MB/s with one decimal and ratios with two.
pub fn fmt(v: f64, unit: &str) -> String {
    match unit {
        "MB/s" => format!("{v:.1}"),
        "x" => format!("{v:.2}"),
        _ => format!("{v:.0}"),
    }
}

/// Where and how the figures were taken, as Markdown lines.
pub fn machine(data_dir: &Path) -> String {
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let dir = data_dir.to_string_lossy();
    let fs = output("findmnt", &["-n", "-o", "FSTYPE,SOURCE", "-T", &dir]);
    format!(
        "- machine: nproc {nproc}, CPU {cpu}, kernel `{}`\n- data dir: {} (filesystem {fs})\n- date: {}\n",
        output("uname", &["-r"]),
        data_dir.display(),
        output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    )
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
