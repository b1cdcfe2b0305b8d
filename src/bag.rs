//! Multisets of row hashes: the rows a batch must not archive again (see
//! `archive::reconcile`).
//!
//! A source's hashes (an unsettled batch, a restored one, the rows of a
//! range in Postgres) are held in memory, 16 bytes and a bit each, while
//! the process's [`Pool`] has room — [`MEMORY_HASHES`] for every multiset
//! together, claimed a chunk at a time; beyond that they go to sorted runs
//! in temporary files, merged into one sorted file, of which memory keeps
//! a bit per hash and the first hash of every block of [`BLOCK`].  So the
//! batches that meet rows already archived need bounded memory together,
//! whatever their size.  A lookup on disk reads one block (4 KiB), or a few
//! when a hash repeats across blocks; the files go away with the multiset
//! (unnamed temporary files in `TMPDIR`).
//!
//! Sorting, spilling, merging and walking a whole multiset take up to
//! seconds of CPU and disk: on a runtime worker they run through
//! [`blocking`], so the worker's other tasks (the other batches, the
//! connections' keepalives) move to another thread meanwhile.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};

/// Hashes the multisets of a process keep in memory together (64 MiB)
/// before they spill to disk.
pub const MEMORY_HASHES: usize = 4 << 20;

/// Hashes per block of a spilled multiset: one read per lookup.
const BLOCK: usize = 256;

const HASH_BYTES: usize = 16;

/// The hashes of one source, sorted, and which of them were taken.
#[derive(Debug)]
pub struct Multiset {
    store: Store,
    /// One bit per hash, in sorted order: taken.
    taken: Vec<u64>,
    /// The pool's room its hashes take in memory (given back when dropped).
    claim: Option<Claim>,
}

#[derive(Debug)]
enum Store {
    Memory(Vec<u128>),
    Disk(Spilled),
}

/// Sorted hashes in a temporary file, little-endian, and the first hash of
/// each block.
#[derive(Debug)]
struct Spilled {
    file: File,
    len: usize,
    fences: Vec<u128>,
}

fn spill_error(e: std::io::Error) -> Error {
    Error::io("cannot spill row hashes to a temporary file", e).with_hint(
        "a batch meeting millions of rows already archived keeps their hashes on disk: \
         give TMPDIR room and write access (16 bytes per such row); nothing was deleted",
    )
}

impl Spilled {
    /// The hashes of block `b`.
    fn block(&self, b: usize) -> Result<Vec<u128>> {
        let start = b * BLOCK;
        let n = BLOCK.min(self.len - start);
        let mut bytes = vec![0u8; n * HASH_BYTES];
        self.file
            .read_exact_at(&mut bytes, (start * HASH_BYTES) as u64)
            .map_err(spill_error)?;
        Ok(bytes
            .chunks_exact(HASH_BYTES)
            .map(|c| u128::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect())
    }
}

impl Multiset {
    /// The multiset of `hashes` (sorted in place), in memory.
    pub fn in_memory(mut hashes: Vec<u128>) -> Self {
        blocking(hashes.len() >= CHUNK, || hashes.sort_unstable());
        let taken = vec![0; hashes.len().div_ceil(64)];
        Self {
            store: Store::Memory(hashes),
            taken,
            claim: None,
        }
    }

    /// Number of hashes, taken or not.
    pub fn len(&self) -> usize {
        match &self.store {
            Store::Memory(v) => v.len(),
            Store::Disk(s) => s.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the hashes are on disk.
    pub fn spilled(&self) -> bool {
        matches!(self.store, Store::Disk(_))
    }

    /// Whether walking it is long work for [`blocking`]: on disk, or a
    /// chunk of hashes or more.
    fn long_walk(&self) -> bool {
        self.spilled() || self.len() >= CHUNK
    }

    /// Number of hashes not yet taken.
    pub fn remaining(&self) -> usize {
        let taken: usize = self.taken.iter().map(|w| w.count_ones() as usize).sum();
        self.len() - taken
    }

    /// Takes one occurrence of `h`; false when none is left.
    pub fn take(&mut self, h: u128) -> Result<bool> {
        let (mut b, mut block) = first_block(&self.store, h)?;
        let mut j = block.partition_point(|x| *x < h);
        loop {
            while j < block.len() {
                if block[j] != h {
                    return Ok(false);
                }
                let i = b * BLOCK + j;
                if !is_taken(&self.taken, i) {
                    mark(&mut self.taken, i);
                    return Ok(true);
                }
                j += 1;
            }
            // Every occurrence in this block is taken; the next block may
            // go on with `h` (only on disk: in memory this was all of it).
            let Store::Disk(s) = &self.store else {
                return Ok(false);
            };
            b += 1;
            if b * BLOCK >= s.len {
                return Ok(false);
            }
            block = Cow::Owned(s.block(b)?);
            j = 0;
        }
    }

    /// Takes every hash of `other` (a multiset) when all of them are left
    /// here, else takes none.  One walk of both in order, twice (look, then
    /// take).
    pub fn take_all(&mut self, other: &Multiset) -> Result<bool> {
        blocking(self.long_walk() || other.long_walk(), || {
            if !self.walk(other, false)? {
                return Ok(false);
            }
            self.walk(other, true)
        })
    }

    /// Whether each hash of `other` has an occurrence left here of its own;
    /// `take`: takes them (a walk that looked first finds them all).
    fn walk(&mut self, other: &Multiset, take: bool) -> Result<bool> {
        let taken = &mut self.taken;
        let mut mine = Sorted::new(&self.store);
        let mut theirs = Sorted::new(&other.store);
        let mut i = 0;
        let mut here = mine.next()?;
        while let Some(h) = theirs.next()? {
            loop {
                match here {
                    Some(x) if x < h || is_taken(taken, i) => {
                        here = mine.next()?;
                        i += 1;
                    }
                    Some(x) if x == h => break,
                    _ => return Ok(false),
                }
            }
            if take {
                mark(taken, i);
            }
            here = mine.next()?;
            i += 1;
        }
        Ok(true)
    }
}

fn is_taken(taken: &[u64], i: usize) -> bool {
    taken[i / 64] & (1 << (i % 64)) != 0
}

fn mark(taken: &mut [u64], i: usize) {
    taken[i / 64] |= 1 << (i % 64);
}

/// The block a lookup of `h` starts in (in memory: all of it, block 0), and
/// its hashes: on disk, the block before the first that starts at or above
/// `h` (the first `h` may end the block before that one).
fn first_block(store: &Store, h: u128) -> Result<(usize, Cow<'_, [u128]>)> {
    match store {
        Store::Memory(v) => Ok((0, Cow::Borrowed(v.as_slice()))),
        Store::Disk(s) => {
            let b = s.fences.partition_point(|f| *f < h).saturating_sub(1);
            Ok((b, Cow::Owned(s.block(b)?)))
        }
    }
}

/// Reads a store's hashes in order, a block at a time.
struct Sorted<'a> {
    store: &'a Store,
    at: usize,
    buf: Vec<u128>,
    buf_at: usize,
}

impl<'a> Sorted<'a> {
    fn new(store: &'a Store) -> Self {
        Self {
            store,
            at: 0,
            buf: Vec::new(),
            buf_at: 0,
        }
    }

    fn next(&mut self) -> Result<Option<u128>> {
        let h = match self.store {
            Store::Memory(v) => v.get(self.at).copied(),
            Store::Disk(s) => {
                if self.at >= s.len {
                    None
                } else {
                    if self.buf_at == self.buf.len() {
                        self.buf = s.block(self.at / BLOCK)?;
                        self.buf_at = 0;
                    }
                    self.buf_at += 1;
                    Some(self.buf[self.buf_at - 1])
                }
            }
        };
        self.at += 1;
        Ok(h)
    }
}

/// The hashes every multiset of the process holds in memory together may
/// not pass: the rest goes to disk.  Claimed a chunk at a time, given back
/// when a multiset is dropped (or spills).
#[derive(Debug)]
pub struct Pool {
    capacity: usize,
    left: Mutex<usize>,
}

impl Pool {
    /// A pool of `capacity` hashes (at least one).
    pub fn new(capacity: usize) -> Arc<Self> {
        let capacity = capacity.max(1);
        Arc::new(Self {
            capacity,
            left: Mutex::new(capacity),
        })
    }

    /// The process's pool: [`MEMORY_HASHES`], or with `fault-injection` the
    /// hashes in `PERMAFROST_BAG_HASHES` (tests make batches spill with it).
    pub fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<Pool>> = OnceLock::new();
        GLOBAL.get_or_init(|| Pool::new(memory_hashes())).clone()
    }

    /// What a collector may fill before it asks again.
    fn chunk(&self) -> usize {
        CHUNK.min(self.capacity)
    }

    fn left(&self) -> std::sync::MutexGuard<'_, usize> {
        self.left
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Up to `want` hashes, as many as are left: how many.
    fn take(&self, want: usize) -> usize {
        let mut left = self.left();
        let got = want.min(*left);
        *left -= got;
        got
    }

    /// An empty claim on the pool.
    fn claim(self: &Arc<Self>) -> Claim {
        Claim {
            pool: self.clone(),
            hashes: 0,
        }
    }
}

/// Room for hashes claimed from a [`Pool`], given back when dropped.
#[derive(Debug)]
struct Claim {
    pool: Arc<Pool>,
    hashes: usize,
}

impl Claim {
    /// Claims up to `more` hashes more: how many it got.
    fn grow(&mut self, more: usize) -> usize {
        let got = self.pool.take(more);
        self.hashes += got;
        got
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        *self.pool.left() += self.hashes;
    }
}

/// Hashes a collector may hold besides its claim (and claims at a time):
/// 1 MiB.
const CHUNK: usize = 1 << 16;

fn memory_hashes() -> usize {
    #[cfg(feature = "fault-injection")]
    if let Some(n) = std::env::var("PERMAFROST_BAG_HASHES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    MEMORY_HASHES
}

/// Gathers a source's hashes: in memory while its pool has room, then in
/// sorted runs on disk ([`Collector::finish`] merges them).
pub struct Collector {
    claim: Claim,
    memory: Vec<u128>,
    /// Sorted runs and their levels (a run of level `k + 1` is [`FAN`] of
    /// level `k` merged), levels never rising towards the end.
    runs: Vec<(u32, File)>,
}

/// Runs of one level merged into one of the next: a source's last merge
/// reads at most `FAN - 1` runs per level (a few dozen files and 64 KiB
/// buffers), however small the pool left its runs.
const FAN: usize = 16;

impl Collector {
    /// A collector expecting about `expected` hashes, in the process's pool.
    pub fn new(expected: usize) -> Self {
        Self::in_pool(expected, Pool::global())
    }

    /// A collector expecting about `expected` hashes, in `pool`: its vector
    /// is sized for them up to the pool's capacity (address space only:
    /// what is not filled costs no memory), so it does not grow by copies.
    pub fn in_pool(expected: usize, pool: Arc<Pool>) -> Self {
        let mut memory = Vec::new();
        let _ = memory.try_reserve_exact(expected.min(pool.capacity));
        Self {
            claim: pool.claim(),
            memory,
            runs: Vec::new(),
        }
    }

    /// How many more hashes fit in memory: a chunk beyond the claim.
    fn room(&self) -> usize {
        (self.claim.hashes + self.claim.pool.chunk()).saturating_sub(self.memory.len())
    }

    /// Adds `hashes`.
    pub fn extend(&mut self, mut hashes: &[u128]) -> Result<()> {
        while !hashes.is_empty() {
            if self.room() == 0 {
                // In memory so far: ask the pool for another chunk; once
                // spilled, runs are as long as the claim allows.
                let chunk = self.claim.pool.chunk();
                if !self.runs.is_empty() || self.claim.grow(chunk) == 0 {
                    blocking(true, || self.spill())?;
                }
            }
            let (now, later) = hashes.split_at(self.room().min(hashes.len()));
            self.memory.extend_from_slice(now);
            hashes = later;
        }
        Ok(())
    }

    /// Writes the hashes in memory to a sorted run of their own.
    fn spill(&mut self) -> Result<()> {
        self.memory.sort_unstable();
        let file = tempfile::tempfile().map_err(spill_error)?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        for h in &self.memory {
            out.write_all(&h.to_le_bytes()).map_err(spill_error)?;
        }
        let file = out.into_inner().map_err(|e| spill_error(e.into_error()))?;
        self.runs.push((0, file));
        self.memory.clear();
        // Like a counter in base FAN: FAN runs of a level become one run of
        // the next.
        while let Some(&(level, _)) = self.runs.last() {
            let n = self.runs.len();
            if n < FAN || self.runs[n - FAN..].iter().any(|(l, _)| *l != level) {
                break;
            }
            let tail = self.runs.drain(n - FAN..).map(|(_, f)| f).collect();
            self.runs.push((level + 1, merge(tail)?.file));
        }
        Ok(())
    }

    /// The multiset of every hash added: in memory when the pool holds
    /// them all (the multiset keeps their claim), else the runs merged into
    /// one sorted file.
    pub fn finish(self) -> Result<Multiset> {
        let long = !self.runs.is_empty() || self.memory.len() >= CHUNK;
        blocking(long, || self.finish_here())
    }

    fn finish_here(mut self) -> Result<Multiset> {
        if self.runs.is_empty() {
            let short = self.memory.len().saturating_sub(self.claim.hashes);
            if self.claim.grow(short) == short {
                let mut set = Multiset::in_memory(std::mem::take(&mut self.memory));
                set.claim = Some(self.claim);
                return Ok(set);
            }
        }
        if !self.memory.is_empty() {
            self.spill()?;
        }
        let Collector {
            claim,
            memory,
            runs,
        } = self;
        let capacity = claim.pool.capacity;
        drop((memory, claim));
        let spilled = merge(runs.into_iter().map(|(_, f)| f).collect())?;
        tracing::info!(
            "{} row hashes are kept in a temporary file: memory holds at most {capacity}",
            spilled.len,
        );
        let taken = vec![0; spilled.len.div_ceil(64)];
        Ok(Multiset {
            store: Store::Disk(spilled),
            taken,
            claim: None,
        })
    }
}

/// Runs `f`: when it is `long` (disk, or [`CHUNK`] hashes or more: up to
/// seconds) on a worker of a multi-thread runtime, after handing the
/// worker's other tasks to another thread; else (short, a blocking thread,
/// a current-thread runtime, no runtime) in place.
fn blocking<T>(long: bool, f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if long && h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// One sorted file of the sorted `runs`, with its fences.
fn merge(runs: Vec<File>) -> Result<Spilled> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut readers = Vec::with_capacity(runs.len());
    for f in runs {
        readers.push(BufReader::with_capacity(1 << 16, RunFile::new(f)));
    }
    let mut heap = BinaryHeap::new();
    for (k, r) in readers.iter_mut().enumerate() {
        if let Some(h) = read_hash(r)? {
            heap.push(Reverse((h, k)));
        }
    }
    let file = tempfile::tempfile().map_err(spill_error)?;
    let mut out = BufWriter::with_capacity(1 << 16, file);
    let (mut len, mut fences) = (0usize, Vec::new());
    while let Some(Reverse((h, k))) = heap.pop() {
        if len % BLOCK == 0 {
            fences.push(h);
        }
        out.write_all(&h.to_le_bytes()).map_err(spill_error)?;
        len += 1;
        if let Some(next) = read_hash(&mut readers[k])? {
            heap.push(Reverse((next, k)));
        }
    }
    let file = out.into_inner().map_err(|e| spill_error(e.into_error()))?;
    Ok(Spilled { file, len, fences })
}

/// A run read from its start (the file's own cursor is past its end).
struct RunFile {
    file: File,
    at: u64,
}

impl RunFile {
    fn new(file: File) -> Self {
        Self { file, at: 0 }
    }
}

impl Read for RunFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

fn read_hash(r: &mut impl Read) -> Result<Option<u128>> {
    let mut b = [0u8; HASH_BYTES];
    match r.read_exact(&mut b) {
        Ok(()) => Ok(Some(u128::from_le_bytes(b))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(spill_error(e)),
    }
}

/// The hashes a batch must not archive again: a multiset of one part per
/// source (a hash in two parts counts twice).
#[derive(Debug, Default)]
pub struct HashBag {
    parts: Vec<Multiset>,
}

impl HashBag {
    /// The bag of `hashes`, in memory.
    pub fn new(hashes: Vec<u128>) -> Self {
        Self::from_parts(vec![Multiset::in_memory(hashes)])
    }

    /// The bag holding every hash of `parts`.
    pub fn from_parts(parts: Vec<Multiset>) -> Self {
        Self {
            parts: parts.into_iter().filter(|p| !p.is_empty()).collect(),
        }
    }

    /// Number of hashes not yet taken.
    pub fn remaining(&self) -> usize {
        self.parts.iter().map(Multiset::remaining).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Takes one occurrence of `h`; false when none is left.
    pub fn take(&mut self, h: u128) -> Result<bool> {
        for p in &mut self.parts {
            if p.take(h)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    /// Pseudo-random hashes in `0..spread` (few values: many repeats).
    fn hashes(seed: u64, n: usize, spread: u64) -> Vec<u128> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                u128::from(x % spread) << 64 | u128::from(x % 3)
            })
            .collect()
    }

    fn collected(hs: &[u128], budget: usize) -> Multiset {
        let mut c = Collector::in_pool(hs.len(), Pool::new(budget));
        for chunk in hs.chunks(7) {
            c.extend(chunk).unwrap();
        }
        // However many runs the pool made, few are left open to merge.
        assert!(c.runs.len() < 3 * FAN, "{} runs open", c.runs.len());
        c.finish().unwrap()
    }

    /// While a long sort or merge holds the only worker of a runtime, the
    /// worker's other tasks still run (a connection's keepalive, the other
    /// batches): the work here waits for one of them, which a blocked
    /// worker would never run.
    #[test]
    fn work_on_many_hashes_leaves_the_worker_to_other_tasks() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        // On the worker (`block_on` itself runs on this thread).
        let answered = rt.block_on(rt.spawn(async {
            let (tx, rx) = std::sync::mpsc::channel();
            let other = tokio::spawn(async move { tx.send(()) });
            let waited = blocking(true, || rx.recv_timeout(Duration::from_secs(30)));
            (waited, other.await)
        }));
        assert!(matches!(answered, Ok((Ok(()), Ok(Ok(()))))), "{answered:?}");
        // Short work, and any on a current-thread runtime, in place.
        let here = std::thread::current().id();
        assert_eq!(blocking(false, || std::thread::current().id()), here);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let at = rt.block_on(async { blocking(true, || std::thread::current().id()) });
        assert_eq!(at, here);
    }

    #[test]
    fn hash_bag_counts_duplicates() {
        let mut bag = HashBag::new(vec![5, 3, 5]);
        assert!(bag.take(5).unwrap());
        assert!(bag.take(5).unwrap());
        assert!(!bag.take(5).unwrap());
        assert!(bag.take(3).unwrap());
        assert!(!bag.take(4).unwrap());
        assert_eq!(bag.remaining(), 0);
    }

    /// In memory or spilled in runs of any size (blocks of 256, hashes
    /// repeating across their edges), a multiset takes exactly what a
    /// counted model does: every occurrence once, nothing else.
    #[test]
    fn a_spilled_multiset_takes_what_one_in_memory_does() {
        for (n, spread, budget) in [
            (0, 10, 5),
            (1, 10, 1),
            (1500, 300, 1),
            (1000, 40, 64),
            (3000, 7, 1000),
            (2600, 2000, 300),
            (5000, 5000, 5000),
        ] {
            let hs = hashes(n as u64 + spread, n, spread);
            let mut left: HashMap<u128, usize> = HashMap::new();
            for h in &hs {
                *left.entry(*h).or_default() += 1;
            }
            let mut set = collected(&hs, budget);
            assert_eq!(set.spilled(), n > budget, "{n} hashes, budget {budget}");
            assert_eq!(set.len(), n);
            for h in hashes(7, 3 * n + 10, spread + 2) {
                let expected = left.get(&h).is_some_and(|c| *c > 0);
                assert_eq!(set.take(h).unwrap(), expected, "hash {h:x}, {n}/{budget}");
                if expected {
                    *left.entry(h).or_default() -= 1;
                }
            }
            assert_eq!(set.remaining(), left.values().sum::<usize>());
        }
    }

    /// The multisets of one pool hold at most its hashes in memory
    /// together; one dropped gives its room back.
    #[test]
    fn multisets_share_their_pool() {
        let pool = Pool::new(1000);
        let of = |n: u64| {
            let mut c = Collector::in_pool(0, pool.clone());
            c.extend(&(0..u128::from(n)).collect::<Vec<_>>()).unwrap();
            c.finish().unwrap()
        };
        let first = of(700);
        assert!(!first.spilled());
        let second = of(400);
        assert!(second.spilled(), "700 + 400 > 1000");
        let third = of(300);
        assert!(!third.spilled(), "700 + 300 fit");
        assert_eq!(*pool.left(), 0);
        drop((first, second));
        assert_eq!(*pool.left(), 700);
        drop(third);
        assert_eq!(*pool.left(), 1000);
    }

    /// Every occurrence of one value, spilled over many blocks, is taken
    /// once each, whichever block it lies in.
    #[test]
    fn one_value_over_many_blocks_is_taken_once_per_occurrence() {
        let mut hs = vec![9u128; 1000];
        hs.extend([1, 2, 10, 11]);
        let mut set = collected(&hs, 100);
        assert!(set.spilled());
        for _ in 0..1000 {
            assert!(set.take(9).unwrap());
        }
        assert!(!set.take(9).unwrap());
        for h in [1, 2, 10, 11] {
            assert!(set.take(h).unwrap());
            assert!(!set.take(h).unwrap());
        }
        assert_eq!(set.remaining(), 0);
    }

    /// `take_all` takes a whole multiset or nothing: duplicates need an
    /// occurrence each, and what an earlier call took is not there again —
    /// in memory and spilled alike.
    #[test]
    fn take_all_takes_a_whole_multiset_or_nothing() {
        for budget in [2, 1000] {
            let of = |hs: &[u128]| collected(hs, budget);
            let mut set = of(&[7, 2, 9, 2, 5, 2]);
            assert!(!set.take_all(&of(&[2, 2, 2, 2])).unwrap(), "three 2s only");
            assert_eq!(set.remaining(), 6, "a refused take takes nothing");
            assert!(!set.take_all(&of(&[9, 4])).unwrap());
            assert!(set.take_all(&of(&[9, 2, 2])).unwrap());
            assert_eq!(set.remaining(), 3);
            assert!(!set.take_all(&of(&[9])).unwrap(), "9 was taken");
            assert!(!set.take_all(&of(&[2, 2])).unwrap(), "one 2 is left");
            assert!(set.take_all(&of(&[5, 2, 7])).unwrap());
            assert_eq!(set.remaining(), 0);
            assert!(set.take_all(&of(&[])).unwrap(), "nothing is always there");
            assert!(!set.take(2).unwrap());
        }
        // Large, spilled on both sides: a sample of a multiset is in it,
        // once; the whole is then no longer.
        let all = hashes(3, 4000, 500);
        let mut set = collected(&all, 300);
        let sample: Vec<u128> = all.iter().step_by(3).copied().collect();
        assert!(set.take_all(&collected(&sample, 256)).unwrap());
        assert_eq!(set.remaining(), 4000 - sample.len());
        assert!(!set.take_all(&collected(&all, 256)).unwrap());
        assert_eq!(set.remaining(), 4000 - sample.len());
    }

    /// A bag of several parts takes exactly what one multiset of all their
    /// hashes would.
    #[test]
    fn a_bag_of_parts_is_one_multiset() {
        let parts: Vec<Vec<u128>> = [0, 1, 130, 700]
            .iter()
            .map(|n| hashes(*n as u64 + 1, *n, 300))
            .collect();
        let mut left: HashMap<u128, usize> = HashMap::new();
        for h in parts.iter().flatten() {
            *left.entry(*h).or_default() += 1;
        }
        let mut bag = HashBag::from_parts(parts.iter().map(|p| collected(p, 100)).collect());
        assert_eq!(bag.remaining(), 831);
        for h in hashes(11, 2000, 300) {
            let expected = left.get(&h).is_some_and(|n| *n > 0);
            assert_eq!(bag.take(h).unwrap(), expected, "hash {h:x}");
            if expected {
                *left.entry(h).or_default() -= 1;
            }
        }
        assert_eq!(bag.remaining(), left.values().sum::<usize>());
        assert!(HashBag::from_parts(vec![collected(&[], 5)]).is_empty());
    }
}
