//! fsync (baseline, no Conveyor code): append 4 KiB to a file in the scratch dir and
//! `fdatasync` it, the clock around both. It shows what one durable write costs on this disk,
//! next to the commit figure that pays at least one.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use super::report::Value;
use super::stats::{micros, percentile};

pub fn run(dir: &Path, rep: usize, warmup: usize, samples: usize) -> Result<Vec<Value>> {
    let path = dir.join(format!("fsync-probe-{rep}"));
    let mut f = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut lat = Vec::with_capacity(samples);
    for i in 0..warmup + samples {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        if i >= warmup {
            lat.push(micros(t.elapsed()));
        }
    }
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(vec![
        Value::new(
            "baseline: 4 KiB append + fdatasync p50",
            "µs",
            percentile(&lat, 50.0),
        ),
        Value::new(
            "baseline: 4 KiB append + fdatasync p99",
            "µs",
            percentile(&lat, 99.0),
        ),
    ])
}
