//! The messages of PostgreSQL's built-in `pgoutput` plugin (protocol 1),
//! as `pg_logical_slot_*_binary_changes` returns them, one per row, turned
//! into committed transactions of row changes.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

/// What a committed row change was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Insert,
    Update,
    Delete,
    /// The whole table emptied: the event has no row.
    Truncate,
}

impl Op {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

/// One row change: the row as the commit wrote it (for a delete, as it
/// was), and for an update the row before it, each as a JSON object of
/// column name to value (text as PostgreSQL prints it; JSON columns as JSON).
#[derive(Debug)]
pub(crate) struct Event {
    pub table: Arc<str>,
    pub op: Op,
    pub row: Map<String, Value>,
    pub old: Option<Map<String, Value>>,
}

/// A committed transaction: its changes in order, and the WAL position just
/// after its commit (where a slot resumes to skip it).
#[derive(Debug)]
pub(crate) struct Committed {
    pub end_lsn: u64,
    pub events: Vec<Event>,
}

/// A table as a `Relation` message describes it.
struct Relation {
    table: Arc<str>,
    /// Each column's name and whether its value is JSON (`json`, `jsonb`).
    columns: Vec<(String, bool)>,
}

/// One column's value in a tuple.
enum Datum {
    Null,
    /// A TOASTed value the update left as it was: not in the WAL's new row.
    Unchanged,
    Text(String),
}

/// Reads messages in order. It keeps the relations it was told of, which
/// the plugin sends once per session: keep one decoder per connection.
#[derive(Default)]
pub(crate) struct Decoder {
    relations: HashMap<u32, Relation>,
    open: Vec<Event>,
}

const JSON_OID: u32 = 114;
const JSONB_OID: u32 = 3802;

impl Decoder {
    /// Reads one message; returns the transaction its `Commit` closes.
    pub(crate) fn read(&mut self, message: &[u8]) -> Result<Option<Committed>, String> {
        let mut r = Reader(message);
        match r.u8()? {
            b'B' => self.open.clear(),
            b'C' => {
                let _flags = r.u8()?;
                let _commit_lsn = r.u64()?;
                let end_lsn = r.u64()?;
                return Ok(Some(Committed {
                    end_lsn,
                    events: std::mem::take(&mut self.open),
                }));
            }
            b'R' => {
                let id = r.u32()?;
                let _namespace = r.cstr()?;
                let table: Arc<str> = r.cstr()?.into();
                let _identity = r.u8()?;
                let count = r.u16()?;
                let mut columns = Vec::with_capacity(count.into());
                for _ in 0..count {
                    let _flags = r.u8()?;
                    let name = r.cstr()?.to_owned();
                    let oid = r.u32()?;
                    let _typmod = r.u32()?;
                    columns.push((name, matches!(oid, JSON_OID | JSONB_OID)));
                }
                self.relations.insert(id, Relation { table, columns });
            }
            b'I' => {
                let relation = self.relation(r.u32()?)?;
                r.expect(b'N')?;
                let row = relation.row(r.tuple()?, None)?;
                let table = relation.table.clone();
                self.open.push(Event {
                    table,
                    op: Op::Insert,
                    row,
                    old: None,
                });
            }
            b'U' => {
                let relation = self.relation(r.u32()?)?;
                let mut old = None;
                let mut kind = r.u8()?;
                if kind == b'O' || kind == b'K' {
                    old = Some(relation.row(r.tuple()?, None)?);
                    kind = r.u8()?;
                }
                if kind != b'N' {
                    return Err(format!("update without its new row ({kind})"));
                }
                let row = relation.row(r.tuple()?, old.as_ref())?;
                let table = relation.table.clone();
                self.open.push(Event {
                    table,
                    op: Op::Update,
                    row,
                    old,
                });
            }
            b'D' => {
                let relation = self.relation(r.u32()?)?;
                let _kind = r.u8()?;
                let row = relation.row(r.tuple()?, None)?;
                let table = relation.table.clone();
                self.open.push(Event {
                    table,
                    op: Op::Delete,
                    row,
                    old: None,
                });
            }
            b'T' => {
                let count = r.u32()?;
                let _options = r.u8()?;
                for _ in 0..count {
                    let table = self.relation(r.u32()?)?.table.clone();
                    self.open.push(Event {
                        table,
                        op: Op::Truncate,
                        row: Map::new(),
                        old: None,
                    });
                }
            }
            // Types, origins, messages.
            _ => {}
        }
        Ok(None)
    }

    fn relation(&self, id: u32) -> Result<&Relation, String> {
        self.relations
            .get(&id)
            .ok_or_else(|| format!("a change to relation {id} before its description"))
    }
}

impl Relation {
    /// The tuple as a JSON object; a value the WAL left out (unchanged
    /// TOAST) comes from `old`, the whole row before the update.
    fn row(
        &self,
        tuple: Vec<Datum>,
        old: Option<&Map<String, Value>>,
    ) -> Result<Map<String, Value>, String> {
        let mut row = Map::with_capacity(tuple.len());
        for ((name, json), datum) in self.columns.iter().zip(tuple) {
            let value = match datum {
                Datum::Null => Value::Null,
                Datum::Unchanged => match old.and_then(|o| o.get(name)) {
                    Some(value) => value.clone(),
                    None => continue,
                },
                Datum::Text(text) if *json => {
                    serde_json::from_str(&text).map_err(|e| format!("column {name}: {e}"))?
                }
                Datum::Text(text) => Value::String(text),
            };
            row.insert(name.clone(), value);
        }
        Ok(row)
    }
}

/// A cursor over one message, big-endian as the protocol has it.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("a message ends early".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn expect(&mut self, tag: u8) -> Result<(), String> {
        match self.u8()? {
            t if t == tag => Ok(()),
            t => Err(format!("expected {:?}, found {:?}", tag as char, t as char)),
        }
    }

    fn cstr(&mut self) -> Result<&'a str, String> {
        let end = self
            .0
            .iter()
            .position(|b| *b == 0)
            .ok_or("a string without its end")?;
        let s = std::str::from_utf8(&self.0[..end]).map_err(|e| e.to_string())?;
        self.0 = &self.0[end + 1..];
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Datum>, String> {
        let count = self.u16()?;
        let mut data = Vec::with_capacity(count.into());
        for _ in 0..count {
            data.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    let bytes = self.take(len)?;
                    Datum::Text(String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())?)
                }
                other => return Err(format!("unknown column kind {:?}", other as char)),
            });
        }
        Ok(data)
    }
}

/// The commit time in a `Begin` message (microseconds since 2000-01-01).
pub(crate) fn begin_time(message: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
    let mut r = Reader(message);
    if r.u8().ok()? != b'B' {
        return None;
    }
    let _final_lsn = r.u64().ok()?;
    let micros = r.u64().ok()? as i64;
    const POSTGRES_EPOCH: i64 = 946_684_800; // 2000-01-01 in Unix seconds
    chrono::DateTime::from_timestamp_micros(POSTGRES_EPOCH * 1_000_000 + micros)
}

/// A WAL position as PostgreSQL writes it (`16/B374D848`).
pub(crate) fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn text(out: &mut Vec<u8>, s: &str) {
        out.push(b't');
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn an_update_takes_unchanged_toast_from_the_old_row_and_json_as_json() {
        let mut relation = vec![b'R'];
        relation.extend_from_slice(&7u32.to_be_bytes());
        cstr(&mut relation, "public");
        cstr(&mut relation, "notes");
        relation.push(b'f');
        relation.extend_from_slice(&3u16.to_be_bytes());
        for (name, oid) in [("id", 2950u32), ("body", 25), ("meta", JSONB_OID)] {
            relation.push(0);
            cstr(&mut relation, name);
            relation.extend_from_slice(&oid.to_be_bytes());
            relation.extend_from_slice(&(-1i32).to_be_bytes());
        }
        let mut update = vec![b'U'];
        update.extend_from_slice(&7u32.to_be_bytes());
        update.push(b'O');
        update.extend_from_slice(&3u16.to_be_bytes());
        text(&mut update, "a");
        text(&mut update, "long body");
        text(&mut update, r#"{"n": 1}"#);
        update.push(b'N');
        update.extend_from_slice(&3u16.to_be_bytes());
        text(&mut update, "a");
        update.push(b'u');
        update.push(b'n');
        let mut commit = vec![b'C', 0];
        commit.extend_from_slice(&1u64.to_be_bytes());
        commit.extend_from_slice(&0x1_0000_0020u64.to_be_bytes());
        commit.extend_from_slice(&0u64.to_be_bytes());

        let mut decoder = Decoder::default();
        for message in [&[b'B'][..], &relation, &update] {
            assert!(decoder.read(message).unwrap().is_none());
        }
        let done = decoder.read(&commit).unwrap().unwrap();
        assert_eq!(lsn_text(done.end_lsn), "1/20");
        let event = &done.events[0];
        assert_eq!((&*event.table, event.op), ("notes", Op::Update));
        assert_eq!(event.row["body"], "long body");
        assert_eq!(event.row["meta"], Value::Null);
        assert_eq!(event.old.as_ref().unwrap()["meta"]["n"], 1);
    }

    #[test]
    fn a_change_before_its_relation_is_an_error() {
        let mut insert = vec![b'I'];
        insert.extend_from_slice(&9u32.to_be_bytes());
        let err = Decoder::default().read(&insert).unwrap_err();
        assert!(err.contains("relation 9"), "{err}");
    }
}
