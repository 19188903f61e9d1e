//! The Raft log and HardState as an append-only, segmented file of checksummed records.
//!
//! Why not sled: every `flush()` of sled wakes its I/O thread pool and issues several syscalls
//! before the `fdatasync`; with three nodes on two cores that thread switching, not the disk,
//! was most of a replicated commit's cost (BENCHMARKS.md). Here a persist is one `pwrite` of
//! all its records and one `fdatasync`, on the Raft task's own thread.
//!
//! Record: `len: u32 LE | crc32(kind + payload): u32 LE | kind: u8 | payload (len bytes)`.
//! Kinds: an entry (protobuf `Entry`), a HardState, and a reset (every entry before it is
//! void: a snapshot from the leader replaced the log). Replay applies records in order; an
//! entry at an index at or below the last one replaces that suffix, as Raft's append does.
//! A torn record at the end of the newest segment (a crash mid-write, never acknowledged) is
//! cut off; damage anywhere else is reported as corruption.
//!
//! Segments are files `<seq>.wal` rolled at `SEGMENT_BYTES`; each starts with the current
//! HardState so deleting older segments after a snapshot never loses it.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

use super::{Result, StoreError};

/// Roll to a new segment file past this size, so compaction can delete whole files.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const HEADER: usize = 9;
const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_RESET: u8 = 3;
/// No record may claim more than this (a corrupt length must not allocate gigabytes).
const MAX_RECORD: usize = 256 * 1024 * 1024;

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

fn corrupt(what: String, message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        message: message.to_string(),
    }
}

/// Where one entry's payload lies.
#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
    term: u64,
}

struct Segment {
    path: PathBuf,
    file: File,
    size: u64,
    /// Highest entry index written to this segment (0: none), to know when it may go.
    last_index: u64,
}

struct Inner {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    active: u64,
    /// Index of `locs[0]`.
    first: u64,
    locs: VecDeque<Loc>,
    hs: Option<HardState>,
    /// Whether any record was ever written (a fresh log may be seeded from older storage).
    empty: bool,
}

/// The log's file; all methods take `&self` because raft-rs reads storage through `&self`.
pub struct Wal {
    inner: Mutex<Inner>,
}

fn encode_record(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

fn encode<M: protobuf::Message>(m: &M) -> Result<Vec<u8>> {
    m.write_to_bytes().map_err(|e| corrupt("encode".into(), e))
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016}.wal")
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync directory", dir, e))
}

impl Inner {
    fn last_index(&self) -> Option<u64> {
        if self.locs.is_empty() {
            None
        } else {
            Some(self.first + self.locs.len() as u64 - 1)
        }
    }

    /// Records an entry at `index`, replacing any suffix from it on.
    fn push(&mut self, index: u64, loc: Loc) -> std::result::Result<(), String> {
        match self.last_index() {
            None => self.first = index,
            Some(last) if index > last + 1 => {
                return Err(format!("entry {index} follows {last}: a gap in the log"));
            }
            Some(_) if index < self.first => {
                self.locs.clear();
                self.first = index;
            }
            Some(_) => self.locs.truncate((index - self.first) as usize),
        }
        self.locs.push_back(loc);
        Ok(())
    }

    fn replay(&mut self, seq: u64, is_last: bool) -> Result<()> {
        let seg = &self.segments[&seq];
        let path = seg.path.clone();
        let len = seg.file.metadata().map_err(|e| io("stat", &path, e))?.len();
        let mut data = vec![0u8; len as usize];
        seg.file
            .read_exact_at(&mut data, 0)
            .map_err(|e| io("read", &path, e))?;
        let mut pos = 0usize;
        let mut last_index = 0;
        let name = path.display().to_string();
        while pos < data.len() {
            let bad = |why: &str| corrupt(format!("{name} at byte {pos}"), why);
            let torn = if data.len() - pos < HEADER {
                Some("a truncated record header")
            } else {
                None
            };
            let (kind, payload, next) = match torn {
                Some(why) => {
                    if is_last {
                        break;
                    }
                    return Err(bad(why));
                }
                None => {
                    let n = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap_or([0; 4]))
                        as usize;
                    let crc =
                        u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap_or([0; 4]));
                    let kind = data[pos + 8];
                    let end = pos + HEADER + n;
                    if n > MAX_RECORD || end > data.len() {
                        if is_last {
                            break;
                        }
                        return Err(bad("a record runs past the end of its segment"));
                    }
                    let payload = &data[pos + HEADER..end];
                    let mut h = crc32fast::Hasher::new();
                    h.update(&[kind]);
                    h.update(payload);
                    if h.finalize() != crc {
                        if is_last {
                            break;
                        }
                        return Err(bad("checksum mismatch"));
                    }
                    (kind, payload, end)
                }
            };
            match kind {
                KIND_ENTRY => {
                    let e = Entry::parse_from_bytes(payload).map_err(|e| bad(&e.to_string()))?;
                    let loc = Loc {
                        segment: seq,
                        offset: (pos + HEADER) as u64,
                        len: payload.len() as u32,
                        term: e.term,
                    };
                    self.push(e.index, loc).map_err(|m| bad(&m))?;
                    last_index = last_index.max(e.index);
                }
                KIND_HARD_STATE => {
                    self.hs = Some(
                        HardState::parse_from_bytes(payload).map_err(|e| bad(&e.to_string()))?,
                    );
                }
                KIND_RESET => self.locs.clear(),
                other => return Err(bad(&format!("unknown record kind {other}"))),
            }
            self.empty = false;
            pos = next;
        }
        let seg = self
            .segments
            .get_mut(&seq)
            .ok_or_else(|| corrupt(name.clone(), "segment vanished"))?;
        if (pos as u64) < len {
            tracing::warn!(segment = %name, at = pos, dropped = len - pos as u64,
                "cutting a torn record off the end of the Raft log (a crash mid-write)");
            seg.file
                .set_len(pos as u64)
                .and_then(|()| seg.file.sync_data())
                .map_err(|e| io("truncate", &path, e))?;
        }
        seg.size = pos as u64;
        seg.last_index = last_index;
        Ok(())
    }

    fn open_segment(&mut self, seq: u64) -> Result<()> {
        let path = self.dir.join(segment_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("open", &path, e))?;
        self.segments.insert(
            seq,
            Segment {
                path,
                file,
                size: 0,
                last_index: 0,
            },
        );
        Ok(())
    }

    /// Starts a new segment beginning with the current HardState, durably. The old one is
    /// synced first: records written without a sync (commit-only HardStates) must not be torn
    /// once they are no longer at the tail, where replay would call that corruption.
    fn roll(&mut self) -> Result<()> {
        if let Some(old) = self.segments.get(&self.active) {
            old.file
                .sync_data()
                .map_err(|e| io("fdatasync", &old.path, e))?;
        }
        let seq = self.active + 1;
        self.open_segment(seq)?;
        self.active = seq;
        if let Some(hs) = self.hs.clone() {
            let mut buf = Vec::new();
            encode_record(&mut buf, KIND_HARD_STATE, &encode(&hs)?);
            self.write(&buf, true)?;
        }
        sync_dir(&self.dir)
    }

    /// Writes `buf` at the end of the active segment; returns the offset it starts at.
    fn write(&mut self, buf: &[u8], sync: bool) -> Result<u64> {
        let seg = self
            .segments
            .get_mut(&self.active)
            .ok_or_else(|| corrupt("wal".into(), "no active segment"))?;
        let at = seg.size;
        seg.file
            .write_all_at(buf, at)
            .map_err(|e| io("write", &seg.path, e))?;
        seg.size += buf.len() as u64;
        if sync {
            seg.file
                .sync_data()
                .map_err(|e| io("fdatasync", &seg.path, e))?;
        }
        self.empty = false;
        Ok(at)
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` and replays it.
    pub fn open(dir: &Path) -> Result<Wal> {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let mut seqs = Vec::new();
        for ent in std::fs::read_dir(dir).map_err(|e| io("list", dir, e))? {
            let ent = ent.map_err(|e| io("list", dir, e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(".wal")
                .and_then(|s| s.parse::<u64>().ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            active: 0,
            first: 0,
            locs: VecDeque::new(),
            hs: None,
            empty: true,
        };
        for (i, seq) in seqs.iter().enumerate() {
            inner.open_segment(*seq)?;
            inner.replay(*seq, i + 1 == seqs.len())?;
            inner.active = *seq;
        }
        if inner.segments.is_empty() {
            inner.open_segment(1)?;
            inner.active = 1;
            sync_dir(dir)?;
        }
        Ok(Wal {
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when nothing was ever written (so older storage may seed it).
    pub fn is_empty(&self) -> bool {
        self.lock().empty
    }

    pub fn hard_state(&self) -> Option<HardState> {
        self.lock().hs.clone()
    }

    /// `(first, last)` entry indexes held, if any.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let w = self.lock();
        w.last_index().map(|l| (w.first, l))
    }

    /// Appends entries (replacing a conflicting suffix) and the HardState in one write, then
    /// `fdatasync`s when `sync`. Returns only once the records are written.
    pub fn append(&self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<()> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let mut w = self.lock();
        if w.segments[&w.active].size >= SEGMENT_BYTES {
            w.roll()?;
        }
        let mut buf = Vec::new();
        let mut spans = Vec::with_capacity(entries.len());
        for e in entries {
            let payload = encode(e)?;
            spans.push((e.index, e.term, buf.len() + HEADER, payload.len()));
            encode_record(&mut buf, KIND_ENTRY, &payload);
        }
        if let Some(hs) = hs {
            encode_record(&mut buf, KIND_HARD_STATE, &encode(hs)?);
        }
        let at = w.write(&buf, sync)?;
        let active = w.active;
        for (index, term, off, len) in spans {
            let loc = Loc {
                segment: active,
                offset: at + off as u64,
                len: len as u32,
                term,
            };
            w.push(index, loc)
                .map_err(|m| corrupt("append".into(), m))?;
            if let Some(seg) = w.segments.get_mut(&active) {
                seg.last_index = seg.last_index.max(index);
            }
        }
        if let Some(hs) = hs {
            w.hs = Some(hs.clone());
        }
        Ok(())
    }

    /// Voids every entry (a leader's snapshot replaced the log) and records `hs`, durably.
    pub fn reset(&self, hs: &HardState) -> Result<()> {
        let mut w = self.lock();
        let mut buf = Vec::new();
        encode_record(&mut buf, KIND_RESET, &[]);
        encode_record(&mut buf, KIND_HARD_STATE, &encode(hs)?);
        w.write(&buf, true)?;
        w.locs.clear();
        w.hs = Some(hs.clone());
        Ok(())
    }

    /// Forgets entries up to `index` (a snapshot covers them) and deletes segment files that
    /// hold nothing newer. Not durable by itself: forgotten entries that survive a crash are
    /// dropped again on open.
    pub fn compact(&self, index: u64) -> Result<()> {
        let mut w = self.lock();
        if let Some(last) = w.last_index() {
            if index >= last {
                w.locs.clear();
            } else if index >= w.first {
                let n = (index + 1 - w.first) as usize;
                w.locs.drain(..n);
                w.first = index + 1;
            }
        }
        if w.locs.is_empty() {
            w.first = index + 1;
        }
        let active = w.active;
        let oldest_needed = w.locs.iter().map(|l| l.segment).min().unwrap_or(active);
        // Only a prefix of segments goes: a reset record in a deleted segment must not leave
        // older entries it voided behind.
        let doomed: Vec<u64> = w
            .segments
            .iter()
            .take_while(|(seq, s)| {
                **seq != active && **seq < oldest_needed && s.last_index <= index
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in doomed {
            if let Some(s) = w.segments.remove(&seq) {
                std::fs::remove_file(&s.path).map_err(|e| io("remove", &s.path, e))?;
            }
        }
        Ok(())
    }

    pub fn term(&self, index: u64) -> Option<u64> {
        let w = self.lock();
        if index < w.first {
            return None;
        }
        w.locs.get((index - w.first) as usize).map(|l| l.term)
    }

    /// Entries `[low, high)`, stopping once their payloads pass `max_bytes` (at least one).
    /// The caller checks the bounds.
    pub fn entries(&self, low: u64, high: u64, max_bytes: Option<u64>) -> Result<Vec<Entry>> {
        let w = self.lock();
        if low < w.first || high > w.first + w.locs.len() as u64 || low >= high {
            return Ok(Vec::new());
        }
        let mut picked: Vec<Loc> = Vec::new();
        let mut total = 0u64;
        for i in low..high {
            let loc = w.locs[(i - w.first) as usize];
            total += u64::from(loc.len);
            if !picked.is_empty() && max_bytes.is_some_and(|m| total > m) {
                break;
            }
            picked.push(loc);
        }
        let mut out = Vec::with_capacity(picked.len());
        // Neighbouring records of one segment are read with one pread.
        let mut i = 0;
        while i < picked.len() {
            let start = picked[i];
            let mut j = i;
            while j + 1 < picked.len()
                && picked[j + 1].segment == start.segment
                && picked[j + 1].offset
                    == picked[j].offset + u64::from(picked[j].len) + HEADER as u64
            {
                j += 1;
            }
            let end = picked[j].offset + u64::from(picked[j].len);
            let seg = w
                .segments
                .get(&start.segment)
                .ok_or_else(|| corrupt("wal".into(), "entry in a deleted segment"))?;
            let mut buf = vec![0u8; (end - start.offset) as usize];
            seg.file
                .read_exact_at(&mut buf, start.offset)
                .map_err(|e| io("read", &seg.path, e))?;
            for loc in &picked[i..=j] {
                let from = (loc.offset - start.offset) as usize;
                let e = Entry::parse_from_bytes(&buf[from..from + loc.len as usize])
                    .map_err(|e| corrupt(seg.path.display().to_string(), e))?;
                out.push(e);
            }
            i = j + 1;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 10].into(),
            ..Default::default()
        }
    }

    fn hs(term: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote: 1,
            commit,
            ..Default::default()
        }
    }

    fn indexes(w: &Wal, low: u64, high: u64) -> Vec<(u64, u64)> {
        w.entries(low, high, None)
            .unwrap()
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    #[test]
    fn replay_restores_entries_hard_state_and_replaced_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let w = Wal::open(dir.path()).unwrap();
        assert!(w.is_empty());
        w.append(
            &[entry(1, 1), entry(2, 1), entry(3, 1)],
            Some(&hs(1, 1)),
            true,
        )
        .unwrap();
        w.append(&[entry(2, 2)], Some(&hs(2, 1)), true).unwrap();
        assert_eq!(w.bounds(), Some((1, 2)));
        drop(w);
        let w = Wal::open(dir.path()).unwrap();
        assert!(!w.is_empty());
        assert_eq!(w.bounds(), Some((1, 2)));
        assert_eq!(indexes(&w, 1, 3), vec![(1, 1), (2, 2)]);
        assert_eq!(w.hard_state(), Some(hs(2, 1)));
        assert_eq!(w.term(3), None);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_writing_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let w = Wal::open(dir.path()).unwrap();
        w.append(&[entry(1, 1), entry(2, 1)], None, true).unwrap();
        drop(w);
        let seg = dir.path().join(segment_name(1));
        let full = std::fs::metadata(&seg).unwrap().len();
        // Half of the last record survives the "crash".
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(full - 5).unwrap();
        let w = Wal::open(dir.path()).unwrap();
        assert_eq!(w.bounds(), Some((1, 1)));
        w.append(&[entry(2, 3)], None, true).unwrap();
        drop(w);
        let w = Wal::open(dir.path()).unwrap();
        assert_eq!(indexes(&w, 1, 3), vec![(1, 1), (2, 3)]);
    }

    #[test]
    fn damage_before_the_tail_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let w = Wal::open(dir.path()).unwrap();
        w.append(&[entry(1, 1), entry(2, 1)], None, true).unwrap();
        drop(w);
        let seg = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[HEADER + 2] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        // In the newest segment a bad record ends the log (it may be a torn write) ...
        let w = Wal::open(dir.path()).unwrap();
        assert_eq!(w.bounds(), None);
        w.append(&[entry(1, 1)], None, true).unwrap();
        drop(w);
        // ... but in an older segment it is reported.
        std::fs::write(dir.path().join(segment_name(1)), &bytes).unwrap();
        std::fs::write(dir.path().join(segment_name(2)), b"").unwrap();
        match Wal::open(dir.path()) {
            Err(StoreError::Corrupt { what, message }) => {
                assert!(what.contains("0000000000000001.wal"), "{what}");
                assert!(message.contains("checksum"), "{message}");
            }
            Err(e) => panic!("wrong error {e}"),
            Ok(_) => panic!("a damaged older segment must not open"),
        }
    }

    #[test]
    fn reset_voids_the_log_and_compaction_deletes_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        let w = Wal::open(dir.path()).unwrap();
        w.append(&[entry(1, 1), entry(2, 1)], Some(&hs(1, 2)), true)
            .unwrap();
        w.reset(&hs(4, 10)).unwrap();
        assert_eq!(w.bounds(), None);
        w.append(&[entry(11, 4)], None, true).unwrap();
        drop(w);
        let w = Wal::open(dir.path()).unwrap();
        assert_eq!(w.bounds(), Some((11, 11)));
        assert_eq!(w.hard_state(), Some(hs(4, 10)));
        // Fill past one segment so compaction has a whole file to delete.
        let big = Entry {
            index: 12,
            term: 4,
            data: vec![7u8; SEGMENT_BYTES as usize].into(),
            ..Default::default()
        };
        w.append(&[big], None, true).unwrap();
        w.append(&[entry(13, 4)], Some(&hs(4, 13)), true).unwrap();
        assert!(dir.path().join(segment_name(2)).exists());
        w.compact(12).unwrap();
        assert!(!dir.path().join(segment_name(1)).exists());
        assert_eq!(w.bounds(), Some((13, 13)));
        drop(w);
        let w = Wal::open(dir.path()).unwrap();
        assert_eq!(
            w.hard_state(),
            Some(hs(4, 13)),
            "the new segment carries it"
        );
        assert_eq!(indexes(&w, 13, 14), vec![(13, 4)]);
    }

    #[test]
    fn entries_respect_the_size_limit_but_return_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        let w = Wal::open(dir.path()).unwrap();
        let es: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).collect();
        w.append(&es, None, false).unwrap();
        assert_eq!(w.entries(1, 6, Some(0)).unwrap().len(), 1);
        let one = u64::from(w.lock().locs[0].len);
        assert_eq!(w.entries(1, 6, Some(one * 3)).unwrap().len(), 3);
        assert_eq!(w.entries(2, 6, None).unwrap().len(), 4);
    }
}
