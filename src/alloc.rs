//! Memory: a counting global allocator for measuring real peak heap bytes, and the
//! engine's reuse of its own tensor buffers ([`reuse_buffers`]).
//!
//! Opt in from a binary, example or bench:
//!
//! ```
//! #[global_allocator]
//! static ALLOC: datarater::alloc::CountingAlloc = datarater::alloc::CountingAlloc;
//!
//! fn main() {
//!     let (v, peak) = datarater::alloc::measure_peak(|| vec![0u8; 1 << 20]);
//!     assert!(peak >= v.len()); // the 1 MiB buffer, counted
//! }
//! ```
//!
//! then bracket the work with [`reset_peak`] and [`peak_bytes`] (or [`measure_peak`]).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Wraps the system allocator and tracks current and peak live bytes.
pub struct CountingAlloc;

fn grow(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: forwards every call to `System` unchanged; only counts sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grow(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Live heap bytes now (0 unless [`CountingAlloc`] is the global allocator).
pub fn current_bytes() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Highest live heap bytes since the last [`reset_peak`].
pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Resets the peak to the current live bytes.
pub fn reset_peak() {
    PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Runs `f` and returns its result with the peak bytes it added above the live bytes
/// at its start.
pub fn measure_peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = current_bytes();
    reset_peak();
    let out = f();
    (out, peak_bytes().saturating_sub(base))
}

/// Runs `f` with the engine's large freed tensor buffers kept for reuse, and frees them
/// when the outermost such call (on any thread) returns.
///
/// The engine's own passes already do this ([`MetaRequest::run`], the
/// [`transforms`](crate::transforms), [`DocumentScorer`] and the trainer's scoring and
/// evaluation), so the engine runs at the same speed in any process, whatever the
/// system allocator's settings. Wrap a loop of many small calls (say, scoring one
/// batch at a time) to share buffers across them too: a buffer of a length that comes
/// back is then reused instead of page-faulting in again. Pooled buffers plus live ones
/// never exceed the most the work needed live at once (see docs/meta-gradients.md,
/// "Buffer reuse"); results do not change.
///
/// ```
/// use datarater::{Tensor, Value};
/// let x = Tensor::<f32>::full(&[256, 256], 0.5)?;
/// let sums = datarater::alloc::reuse_buffers(|| {
///     (0..4).map(|_| x.mul(&x).sum_all().item()).collect::<Vec<_>>()
/// });
/// assert_eq!(sums, vec![16384.0; 4]);
/// assert_eq!(datarater::alloc::pooled_bytes(), 0); // released on return
/// # Ok::<(), datarater::Error>(())
/// ```
///
/// [`MetaRequest::run`]: crate::meta::MetaRequest::run
/// [`DocumentScorer`]: crate::curate::documents::DocumentScorer
pub fn reuse_buffers<T>(f: impl FnOnce() -> T) -> T {
    let _scope = crate::autodiff::pool::Scope::enter();
    f()
}

/// Bytes of freed tensor buffers the engine keeps for reuse right now (0 outside
/// [`reuse_buffers`] and the engine's passes).
pub fn pooled_bytes() -> usize {
    crate::autodiff::pool::held_bytes()
}

/// How many times a freed tensor buffer has been reused since the process started.
pub fn reused_buffers() -> usize {
    crate::autodiff::pool::reused()
}
