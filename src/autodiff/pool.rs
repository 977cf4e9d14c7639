//! Reuse of the engine's large tensor buffers within a pass.
//!
//! A pass (a meta-gradient, a gradient, a scoring run) allocates and frees the same
//! arrays over and over: each inner step's activations, attention scores, tangents and
//! cotangents have the shapes of the step before. Left to the system allocator, a
//! freed block above glibc's thresholds goes back to the kernel (unmapped, or trimmed
//! off the top of the heap) and the next array of that size page-faults in again: the
//! reference meta-gradient took 119,000 minor faults per run. So, while a [`Scope`] is
//! open, the last owner of a large buffer (a [`Tensor`](super::Tensor) being dropped)
//! hands it to this pool instead of freeing it, and the kernels that create arrays
//! take a free buffer of exactly their length from it before asking the allocator.
//!
//! The rules that keep it honest:
//! - **Exact sizes, the kernels' own buffers.** Buffers are kept per element count
//!   and only reused for that count, so nothing is over-allocated; only buffers the
//!   pool's kernels allocated come back (parameters, data and copies made elsewhere
//!   are freed as before), and none under [`MIN_BYTES`] (the allocator's small-size
//!   caches already reuse those).
//! - **Never above the pass's own peak.** The pool tracks the bytes of its buffers in
//!   use and the most of them in use at once so far in the pass. When a kernel asks
//!   for a length the pool has none of, it first frees (to the allocator) pooled
//!   buffers until pooled plus in-use bytes, with the new buffer, are within that
//!   peak again: the pool changes where freed memory goes, not how much the pass
//!   holds at its peak (the memory budget's book stays true).
//! - **Released when the pass ends.** Scopes nest (and may be opened on several
//!   threads); when the last one closes, every pooled buffer is freed.
//! - **No result changes.** A reused buffer is either zeroed
//!   ([`kernels::par_rows_new`](super::kernels::par_rows_new)) or entirely overwritten
//!   by its kernel, so results are bitwise those of fresh allocations.

use super::float::Float;
use std::any::{Any, TypeId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Buffers smaller than this (64 KiB) are never pooled.
pub(crate) const MIN_BYTES: usize = 64 << 10;

/// Free buffers of one element type, by element count.
struct Pool<F> {
    /// Each with the thread that gave it back ([`thread_tag`]), most recent last.
    free: BTreeMap<usize, Vec<(usize, Vec<F>)>>,
    /// Bytes of all the buffers in `free`.
    held: usize,
    /// Buffers handed out again (for tests and the docs' measurements).
    reused: usize,
    /// Addresses of the buffers the pool's kernels allocated in this pass (pooled or
    /// live): only those come back to it. Buffers made elsewhere (copies, parameters,
    /// data) are mostly of lengths no kernel asks for again; pooling them would only
    /// pile them up.
    owned: BTreeSet<usize>,
    /// Bytes of the pool's buffers in use (handed out or allocated, not yet back).
    live: usize,
    /// The most `live` has been in this pass: `live + held` never exceeds it.
    peak_live: usize,
}

impl<F> Pool<F> {
    const fn new() -> Self {
        Pool {
            free: BTreeMap::new(),
            held: 0,
            reused: 0,
            owned: BTreeSet::new(),
            live: 0,
            peak_live: 0,
        }
    }
}

/// Open scopes, over all threads.
static OPEN: AtomicUsize = AtomicUsize::new(0);
static POOL_F32: Mutex<Pool<f32>> = Mutex::new(Pool::new());
static POOL_F64: Mutex<Pool<f64>> = Mutex::new(Pool::new());

/// The pool of `F` (`None` for an element type other than `f32` and `f64`).
fn pool<F: Float>() -> Option<MutexGuard<'static, Pool<F>>> {
    let any: &'static dyn Any = if TypeId::of::<F>() == TypeId::of::<f32>() {
        &POOL_F32
    } else {
        &POOL_F64
    };
    let m = any.downcast_ref::<Mutex<Pool<F>>>()?;
    // A panic while holding the lock leaves the lists consistent (no invariant spans
    // two statements that can panic), so a poisoned lock is still usable.
    Some(m.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A number naming the calling thread (the address of a thread-local).
fn thread_tag() -> usize {
    thread_local!(static TAG: u8 = const { 0 });
    TAG.with(|t| t as *const u8 as usize)
}

fn bytes<F>(len: usize) -> usize {
    len.saturating_mul(std::mem::size_of::<F>())
}

/// Whether a buffer of `len` elements of `F` would be pooled now.
#[inline]
pub(crate) fn wants<F: Float>(len: usize) -> bool {
    bytes::<F>(len) >= MIN_BYTES && OPEN.load(Ordering::Relaxed) > 0
}

impl<F> Pool<F> {
    /// A free buffer of exactly `len` elements (`Ok`), or, on a miss, the buffers
    /// evicted so that the pooled bytes plus the live ones, with the `len` elements
    /// about to be allocated, stay within the most the pass has had live at once
    /// (`Err`): the nearest larger length first (the allocator can carve the new block
    /// from it), then the largest smaller ones.
    fn take(&mut self, len: usize) -> Result<Vec<F>, Vec<Vec<F>>> {
        if let Some(v) = self.pop(len) {
            self.reused += 1;
            self.live += bytes::<F>(len);
            return Ok(v);
        }
        self.live += bytes::<F>(len);
        self.peak_live = self.peak_live.max(self.live);
        let mut evicted = Vec::new();
        while self.live + self.held > self.peak_live {
            let next = self.free.range(len..).next().map(|(&k, _)| k);
            let Some(key) = next.or_else(|| self.free.keys().next_back().copied()) else {
                break;
            };
            let v = self.pop(key).expect("key just found");
            self.owned.remove(&(v.as_ptr() as usize));
            evicted.push(v);
        }
        Err(evicted)
    }

    fn pop(&mut self, len: usize) -> Option<Vec<F>> {
        let list = self.free.get_mut(&len)?;
        // The calling thread's most recent buffer first: it is likely still in this
        // core's cache.
        let me = thread_tag();
        let at = list
            .iter()
            .rposition(|(t, _)| *t == me)
            .unwrap_or(list.len() - 1);
        let (_, v) = list.remove(at);
        if list.is_empty() {
            self.free.remove(&len);
        }
        self.held -= bytes::<F>(len);
        Some(v)
    }

    fn give(&mut self, v: Vec<F>) {
        let b = bytes::<F>(v.len());
        self.live = self.live.saturating_sub(b);
        self.held += b;
        self.free
            .entry(v.len())
            .or_default()
            .push((thread_tag(), v));
    }
}

/// A pooled buffer of exactly `len` initialised elements (their values are left over
/// from its last use), or `None`: nothing of that length is free, or no scope is open.
/// On a miss, first frees as many other pooled buffers as it takes to keep the pool
/// within the pass's peak (see the module docs); the caller then allocates and
/// [`adopt`]s the new buffer.
pub(crate) fn take<F: Float>(len: usize) -> Option<Vec<F>> {
    if !wants::<F>(len) {
        return None;
    }
    let got = pool::<F>()?.take(len);
    got.ok() // evicted buffers are freed here, outside the lock
}

/// Marks `v`, just allocated by a kernel after [`take`] found nothing, as the pool's:
/// when its last owner drops it, it comes back ([`give`]).
pub(crate) fn adopt<F: Float>(v: &[F]) {
    if wants::<F>(v.len()) {
        if let Some(mut p) = pool::<F>() {
            p.owned.insert(v.as_ptr() as usize);
        }
    }
}

/// Keeps `v` for reuse when a scope is open and it is one of the pool's buffers
/// ([`adopt`]), full (`len == capacity`, so every element is initialised); frees it
/// otherwise.
pub(crate) fn give<F: Float>(v: Vec<F>) {
    if wants::<F>(v.len()) && v.len() == v.capacity() {
        if let Some(mut p) = pool::<F>() {
            if p.owned.contains(&(v.as_ptr() as usize)) {
                p.give(v);
            }
        }
    }
}

/// Frees every pooled buffer of `F`.
fn release<F: Float>() {
    let free = match pool::<F>() {
        Some(mut p) => {
            p.held = 0;
            p.owned.clear();
            (p.live, p.peak_live) = (0, 0);
            std::mem::take(&mut p.free)
        }
        None => return,
    };
    drop(free); // outside the lock
}

/// Bytes pooled now, over both element types.
pub(crate) fn held_bytes() -> usize {
    pool::<f32>().map_or(0, |p| p.held) + pool::<f64>().map_or(0, |p| p.held)
}

/// Buffers handed out again since the process started, over both element types.
pub(crate) fn reused() -> usize {
    pool::<f32>().map_or(0, |p| p.reused) + pool::<f64>().map_or(0, |p| p.reused)
}

/// While alive, large freed tensor buffers are kept for reuse; when the last open
/// scope (on any thread) is dropped, they are all freed.
#[must_use = "the pool is released when the scope is dropped"]
pub(crate) struct Scope(());

impl Scope {
    /// Opens a scope.
    pub(crate) fn enter() -> Self {
        OPEN.fetch_add(1, Ordering::Relaxed);
        Scope(())
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if OPEN.fetch_sub(1, Ordering::AcqRel) == 1 {
            release::<f32>();
            release::<f64>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 1000;

    #[test]
    fn hands_back_exact_lengths() {
        let mut p = Pool::<f32>::new();
        let v = vec![2.0f32; BIG];
        let ptr = v.as_ptr();
        p.live = 4 * BIG;
        p.give(v);
        assert_eq!((p.held, p.live), (4 * BIG, 0));
        let w = p.take(BIG).expect("the buffer just given");
        assert_eq!((w.as_ptr(), w.len(), w[0]), (ptr, BIG, 2.0));
        assert_eq!((p.held, p.live, p.reused), (0, 4 * BIG, 1));
        assert!(p.free.is_empty());
        assert!(p.take(BIG).expect_err("nothing left").is_empty());
    }

    #[test]
    fn a_miss_keeps_pooled_plus_live_within_the_peak() {
        let mut p = Pool::<f64>::new();
        // A pass that had 6 BIG elements in use at once, all given back.
        for len in [BIG, 2 * BIG, 3 * BIG] {
            p.take(len).expect_err("empty");
        }
        assert_eq!((p.live, p.peak_live), (8 * 6 * BIG, 8 * 6 * BIG));
        for len in [BIG, 2 * BIG, 3 * BIG] {
            p.give(vec![0.0; len]);
        }
        assert_eq!((p.held, p.live), (8 * 6 * BIG, 0));
        // No buffer of 2.5 BIG: the nearest larger one (3 BIG) goes to make room.
        let evicted = p.take(5 * BIG / 2).expect_err("a miss");
        assert_eq!(evicted.iter().map(Vec::len).collect::<Vec<_>>(), [3 * BIG]);
        assert_eq!((p.held, p.live), (8 * 3 * BIG, 8 * 5 * BIG / 2));
        // 1.5 BIG more: the 2 BIG buffer goes; BIG stays, as 4 BIG in use plus BIG
        // pooled fit in the peak of 6 BIG.
        let evicted = p.take(3 * BIG / 2).expect_err("a miss");
        assert_eq!(evicted.iter().map(Vec::len).collect::<Vec<_>>(), [2 * BIG]);
        assert_eq!((p.held, p.live), (8 * BIG, 8 * 4 * BIG));
        // 2 BIG more: nothing that long or longer is pooled, so the largest shorter
        // one (the last) goes: 6 BIG in use is the peak, nothing pooled.
        let evicted = p.take(2 * BIG).expect_err("a miss");
        assert_eq!(evicted.iter().map(Vec::len).collect::<Vec<_>>(), [BIG]);
        assert_eq!((p.held, p.live, p.peak_live), (0, 8 * 6 * BIG, 8 * 6 * BIG));
        assert!(p.held + p.live <= p.peak_live);
        assert_eq!(p.reused, 0);
    }
}
