//! `syncflow dlq`: list, show, replay and purge dead letters.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use super::Format;
use crate::clock::format_time;
use crate::clock::now_ms;
use crate::compile::{Config, compile_dir};
use crate::config::env::ProcessEnv;
use crate::dlq::{DeadLetterStore, Filter, Stored};
use crate::executor::DLQ_STREAM;
use crate::pipeline::MessageMeta;

#[derive(Debug, Clone, clap::Args)]
pub struct Selection {
    /// Only this pipeline's dead letters.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Only this kind (decode, key, input_schema, script, mapping,
    /// output_schema, unknown_id, provider_rejected, retries_exhausted...).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this record key.
    #[arg(long)]
    pub key: Option<String>,
    /// Dead-lettered at or after: a UTC time (2026-12-03T10:00:00Z) or an
    /// age (15m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Dead-lettered before: a time or an age, as --since.
    #[arg(long)]
    pub until: Option<String>,
    /// Dead letters by place, `STREAM#SEQ` or a sequence of syncflow's own
    /// dead-letter stream (as `list` shows them).
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
}

impl Selection {
    fn is_empty(&self) -> bool {
        self.pipeline.is_none()
            && self.kind.is_none()
            && self.key.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.ids.is_empty()
    }

    fn filter(&self) -> Result<Filter, String> {
        let now = now_ms();
        let time = |t: &Option<String>| {
            t.as_deref()
                .map(|t| crate::clock::parse_time(t, now))
                .transpose()
        };
        Ok(Filter {
            pipeline: self.pipeline.clone(),
            kind: self.kind.clone(),
            key: self.key.clone(),
            since_ms: time(&self.since)?,
            until_ms: time(&self.until)?,
        })
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// A table of the selected dead letters, with counts by pipeline and kind.
    List {
        #[command(flatten)]
        select: Selection,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Dead letters in full, as pretty JSON.
    Show {
        /// `STREAM#SEQ`, or a sequence of syncflow's own dead-letter stream.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Publishes the selected dead letters' original messages to their
    /// original subjects, then removes the dead letters.
    Replay {
        #[command(flatten)]
        select: Selection,
        /// Evaluate them with the current config and say what would happen;
        /// publish and remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Every dead letter (when no filter or id is given).
        #[arg(long)]
        all: bool,
    },
    /// Removes the selected dead letters.
    Purge {
        #[command(flatten)]
        select: Selection,
        /// Every dead letter (when no filter or id is given).
        #[arg(long)]
        all: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// Runs one `dlq` subcommand; returns whether it did all it was asked.
pub fn run(dir: &Path, command: &DlqCommand, out: &mut dyn Write) -> Result<bool, String> {
    // Dead letters are read with the config's connection settings, and a
    // dry run evaluates with its pipelines: the pipelines' own tests are
    // not a precondition (the operator may be fixing them).
    let config = compile_dir(dir, &ProcessEnv, false)
        .map_err(|d| format!("{d}{} errors in the config", d.len()))?;
    super::block_on(async {
        let store = connect(&config).await?;
        match command {
            DlqCommand::List { select, format } => {
                let letters = select_letters(&store, select).await?;
                list(&letters, *format, out).map_err(|e| e.to_string())?;
                Ok(true)
            }
            DlqCommand::Show { ids } => {
                for id in ids {
                    let (stream, seq) = parse_id(id)?;
                    let stored = store.get(&stream, seq).await.map_err(|e| e.to_string())?;
                    let pretty = serde_json::to_string_pretty(&stored).expect("JSON serializes");
                    writeln!(out, "{pretty}").map_err(|e| e.to_string())?;
                }
                Ok(true)
            }
            DlqCommand::Replay {
                select,
                dry_run,
                all,
            } => {
                require_selection(select, *all, "replay")?;
                let letters = select_letters(&store, select).await?;
                match dry_run {
                    true => dry_run_letters(&config, &letters, out).map_err(|e| e.to_string()),
                    false => replay(&store, &letters, out).await,
                }
            }
            DlqCommand::Purge { select, all, yes } => {
                require_selection(select, *all, "purge")?;
                let letters = select_letters(&store, select).await?;
                purge(&store, &letters, *yes, out).await
            }
        }
    })
}

fn require_selection(select: &Selection, all: bool, verb: &str) -> Result<(), String> {
    match (select.is_empty(), all) {
        (true, false) => Err(format!(
            "say which dead letters to {verb}: ids, --pipeline, --kind, --key, --since, --until, or --all"
        )),
        (false, true) => Err(format!("--all {verb}s every dead letter: give it alone")),
        _ => Ok(()),
    }
}

async fn connect(config: &Config) -> Result<DeadLetterStore, String> {
    let js = super::jetstream(config).await?;
    let subjects: BTreeMap<String, String> = config
        .pipelines
        .values()
        .map(|p| (p.name.clone(), p.dead_letter_subject.clone()))
        .collect();
    Ok(DeadLetterStore::new(js, subjects))
}

/// `STREAM#SEQ`, or a bare sequence of syncflow's own stream.
fn parse_id(id: &str) -> Result<(String, u64), String> {
    let (stream, seq) = id.rsplit_once('#').unwrap_or((DLQ_STREAM, id));
    let seq = seq
        .parse()
        .map_err(|_| format!("\"{id}\" is not a dead letter id (STREAM#SEQ or SEQ)"))?;
    Ok((stream.to_string(), seq))
}

async fn select_letters(
    store: &DeadLetterStore,
    select: &Selection,
) -> Result<Vec<Stored>, String> {
    let filter = select.filter()?;
    if select.ids.is_empty() {
        return store.list(&filter).await.map_err(|e| e.to_string());
    }
    let mut letters = Vec::new();
    for id in &select.ids {
        let (stream, seq) = parse_id(id)?;
        let stored = store.get(&stream, seq).await.map_err(|e| e.to_string())?;
        if filter.matches(&stored) {
            letters.push(stored);
        }
    }
    Ok(letters)
}

fn id(s: &Stored) -> String {
    format!("{}#{}", s.stream, s.seq)
}

/// At most `max` characters, on one line.
fn clip(text: &str, max: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match one_line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

fn list(letters: &[Stored], format: Format, out: &mut dyn Write) -> std::io::Result<()> {
    if format == Format::Json {
        for s in letters {
            writeln!(
                out,
                "{}",
                serde_json::to_string(s).expect("JSON serializes")
            )?;
        }
        return Ok(());
    }
    if letters.is_empty() {
        return writeln!(out, "no dead letters");
    }
    let rows: Vec<[String; 6]> = letters
        .iter()
        .map(|s| {
            let l = &s.letter;
            [
                id(s),
                format_time(s.time_ms),
                l.pipeline.clone(),
                l.error.kind.clone(),
                clip(l.key.as_deref().unwrap_or("-"), 24),
                clip(&l.error.message, 70),
            ]
        })
        .collect();
    let header = ["ID", "TIME", "PIPELINE", "KIND", "KEY", "ERROR"].map(String::from);
    table(out, &header, &rows)?;
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for s in letters {
        *counts
            .entry((&s.letter.pipeline, &s.letter.error.kind))
            .or_default() += 1;
    }
    writeln!(out)?;
    let rows: Vec<[String; 3]> = counts
        .iter()
        .map(|((p, k), n)| [p.to_string(), k.to_string(), n.to_string()])
        .collect();
    table(out, &["PIPELINE", "KIND", "COUNT"].map(String::from), &rows)?;
    writeln!(out, "{} dead letters", letters.len())
}

/// Columns padded to their widest cell; the last one is not padded.
fn table<const N: usize>(
    out: &mut dyn Write,
    header: &[String; N],
    rows: &[[String; N]],
) -> std::io::Result<()> {
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// What the current config would do with each dead letter's original.
fn dry_run_letters(
    config: &Config,
    letters: &[Stored],
    out: &mut dyn Write,
) -> std::io::Result<bool> {
    let mut would_fail = 0;
    for s in letters {
        let l = &s.letter;
        write!(
            out,
            "{} {} key={}: ",
            id(s),
            l.pipeline,
            l.key.as_deref().unwrap_or("-")
        )?;
        let Some(p) = config.pipelines.get(&l.pipeline) else {
            writeln!(
                out,
                "pipeline \"{}\" is not in the config; the message would reach whatever consumes {}",
                l.pipeline, l.original.subject
            )?;
            continue;
        };
        let payload = match l.original.payload() {
            Ok(payload) => payload,
            Err(e) => {
                would_fail += 1;
                writeln!(out, "cannot be replayed: {e}")?;
                continue;
            }
        };
        let headers = l.original.header_pairs();
        let meta = MessageMeta {
            subject: &l.original.subject,
            seq: l.original.sequence,
            timestamp_ms: l.original.timestamp_ms,
            headers: &headers,
            linked_key: None,
        };
        match p.evaluate(&meta, &payload) {
            Ok(o) => {
                let why = o.skip_reason.map(|r| format!(" ({r})")).unwrap_or_default();
                writeln!(
                    out,
                    "would {}{why} (was {}: {})",
                    o.action,
                    l.error.kind,
                    clip(&l.error.message, 80)
                )?;
                if let Some(body) = &o.body {
                    writeln!(out, "   {body}")?;
                }
            }
            Err(e) => {
                would_fail += 1;
                writeln!(
                    out,
                    "would be dead-lettered again: {}: {}",
                    e.kind,
                    clip(&e.message, 120)
                )?;
            }
        }
    }
    writeln!(
        out,
        "dry run: {} dead letters, {} would fail again; nothing was published or removed",
        letters.len(),
        would_fail
    )?;
    writeln!(
        out,
        "(rules, mappings and schemas were checked; what the provider answers is known only from the replay)"
    )?;
    Ok(would_fail == 0)
}

async fn replay(
    store: &DeadLetterStore,
    letters: &[Stored],
    out: &mut dyn Write,
) -> Result<bool, String> {
    let io = |e: std::io::Error| e.to_string();
    let mut failed = 0;
    for s in letters {
        match store.replay(s).await {
            Ok(r) => writeln!(
                out,
                "{} replayed to {} (seq {}{})",
                id(s),
                r.subject,
                r.seq,
                if r.new { "" } else { ", already published" }
            )
            .map_err(io)?,
            Err(e) => {
                failed += 1;
                writeln!(out, "{} not replayed: {e}", id(s)).map_err(io)?;
            }
        }
    }
    writeln!(out, "{} replayed, {failed} failed", letters.len() - failed).map_err(io)?;
    Ok(failed == 0)
}

async fn purge(
    store: &DeadLetterStore,
    letters: &[Stored],
    yes: bool,
    out: &mut dyn Write,
) -> Result<bool, String> {
    let io = |e: std::io::Error| e.to_string();
    if letters.is_empty() {
        writeln!(out, "no dead letters selected").map_err(io)?;
        return Ok(true);
    }
    if !yes {
        write!(
            out,
            "remove {} dead letters for good? [y/N] ",
            letters.len()
        )
        .map_err(io)?;
        out.flush().map_err(io)?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer).map_err(io)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            writeln!(out, "nothing removed").map_err(io)?;
            return Ok(false);
        }
    }
    for s in letters {
        store
            .delete(s)
            .await
            .map_err(|e| format!("{}: {e}", id(s)))?;
    }
    writeln!(out, "{} dead letters removed", letters.len()).map_err(io)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_a_stream_or_default_to_syncflows_own() {
        assert_eq!(parse_id("12").unwrap(), (DLQ_STREAM.to_string(), 12));
        assert_eq!(parse_id("DLQ_X#3").unwrap(), ("DLQ_X".to_string(), 3));
        assert!(parse_id("x").unwrap_err().contains("not a dead letter id"));
    }

    #[test]
    fn tables_align_and_clip() {
        let mut out = Vec::new();
        let rows = [["a".to_string(), "long cell".to_string()]];
        table(&mut out, &["H1".to_string(), "H2".to_string()], &rows).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "H1  H2\na   long cell\n");
        assert_eq!(clip("ab\ncd", 10), "ab cd");
        assert_eq!(clip("abcdef", 3), "abc…");
    }
}
