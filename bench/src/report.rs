//! Collecting samples and printing the results table.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::contenders::{Lib, Op};

/// One measurement: `ops` calls of `rows_per_op` rows each.
pub struct Sample {
    pub ops: usize,
    pub rows_per_op: usize,
    pub wall: Duration,
    pub latencies: Vec<Duration>,
}

#[derive(Default)]
struct Totals {
    ops: usize,
    rows: usize,
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Totals {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64()
    }

    fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.wall.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// The `p` quantile of `latencies` (0.5: the median), nearest rank.
pub(crate) fn percentile(latencies: &[Duration], p: f64) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// All results of a run.
#[derive(Default)]
pub struct Table {
    cells: BTreeMap<(Op, usize, Lib), Totals>,
    pub loop_rows_per_sec: Option<f64>,
    /// `(contender, peak bytes)` of a 100,000-row bulk insert.
    pub memory: Vec<(String, u64)>,
    pub timings: Vec<(String, Duration)>,
    /// Commit → change-feed event delays of single-row inserts.
    pub feed: Vec<Duration>,
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.0}")
    }
}

/// One cell of `--json`.
#[derive(serde::Serialize)]
struct JsonCell {
    operation: &'static str,
    tasks: usize,
    contender: &'static str,
    ops_per_sec: f64,
    rows_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Table {
    /// Every cell as a JSON array.
    pub fn json(&self) -> String {
        let cells: Vec<JsonCell> = self
            .cells
            .iter()
            .map(|((op, tasks, lib), t)| JsonCell {
                operation: op.label(),
                tasks: *tasks,
                contender: lib.label(),
                ops_per_sec: t.ops_per_sec(),
                rows_per_sec: t.rows_per_sec(),
                p50_ms: t.percentile(0.5).as_secs_f64() * 1000.0,
                p99_ms: t.percentile(0.99).as_secs_f64() * 1000.0,
            })
            .collect();
        serde_json::to_string_pretty(&cells).expect("plain data serializes")
    }

    pub fn add(&mut self, op: Op, tasks: usize, lib: Lib, sample: Sample) {
        let t = self.cells.entry((op, tasks, lib)).or_default();
        t.ops += sample.ops;
        t.rows += sample.ops * sample.rows_per_op;
        t.wall += sample.wall;
        t.latencies.extend(sample.latencies);
    }

    pub fn render(&self, quick: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "mandrake-storage benchmark ({})\n",
            if quick { "--quick" } else { "full" }
        );
        let others = [
            Lib::OursImport,
            Lib::OursPgBouncer,
            Lib::SqlxSame,
            Lib::Sqlx,
            Lib::TokioPgPool,
            Lib::TokioPostgres,
            Lib::SeaOrm,
            Lib::Copy,
        ];
        let mut header = "| operation | tasks | ours | ours p50 / p99 ms |".to_owned();
        let mut rule = "|---|---|---|---|".to_owned();
        for lib in others {
            header.push_str(&format!(" {} | vs |", lib.label()));
            rule.push_str("---|---|");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        let mut keys: Vec<(Op, usize)> = self
            .cells
            .keys()
            .map(|(op, tasks, _)| (*op, *tasks))
            .collect();
        keys.dedup();
        for (op, tasks) in keys {
            let get = |lib| self.cells.get(&(op, tasks, lib));
            let Some(ours) = get(Lib::Ours) else { continue };
            let rate = |t: &Totals| {
                if op.is_bulk() {
                    t.rows_per_sec()
                } else {
                    t.ops_per_sec()
                }
            };
            let mut line = format!(
                "| {} | {tasks} | {:.0} | {} / {} |",
                op.label(),
                rate(ours),
                ms(ours.percentile(0.5)),
                ms(ours.percentile(0.99)),
            );
            for lib in others {
                match get(lib) {
                    Some(t) => {
                        line.push_str(&format!(" {:.0} | {:.2}× |", rate(t), rate(ours) / rate(t)))
                    }
                    None => line.push_str(" - | - |"),
                }
            }
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(
            out,
            "\nBulk rows are rows/s; everything else is calls/s. \"vs X\" is ours ÷ X: above 1 is faster."
        );
        if let (Some(loop_rate), Some(bulk)) = (
            self.loop_rows_per_sec,
            self.cells.get(&(Op::CreateMany100k, 1, Lib::Ours)),
        ) {
            let _ = writeln!(
                out,
                "\ncreate_many of 100,000 rows: {:.0} rows/s; a loop of create: {:.0} rows/s; ratio {:.1}×",
                bulk.rows_per_sec(),
                loop_rate,
                bulk.rows_per_sec() / loop_rate
            );
        }
        if !self.memory.is_empty() {
            let _ = writeln!(
                out,
                "\nPeak memory (RSS growth) of a 100,000-row bulk insert, inputs excluded:"
            );
            for (lib, bytes) in &self.memory {
                let _ = writeln!(
                    out,
                    "  {lib:<16} {:.1} MiB",
                    *bytes as f64 / (1024.0 * 1024.0)
                );
            }
        }
        if !self.feed.is_empty() {
            let _ = writeln!(
                out,
                "\nChange feed (Message::subscribe), {} single-row commits, from the commit's \
                 acknowledgement to the event: p50 {} ms, p99 {} ms",
                self.feed.len(),
                ms(percentile(&self.feed, 0.5)),
                ms(percentile(&self.feed, 0.99)),
            );
        }
        if !self.timings.is_empty() {
            let _ = writeln!(out, "\nTimings:");
            for (what, took) in &self.timings {
                let _ = writeln!(out, "  {what}: {:.2} s", took.as_secs_f64());
            }
        }
        out
    }
}
