//! A team of threads that stays awake between the parallel regions of a forward pass.
//!
//! Why not rayon: a forward pass is hundreds of short parallel regions (a matmul, a norm,
//! attention) separated by short serial stretches. Rayon's idle workers fall asleep after a
//! few dozen polls (tens of microseconds), so most regions began by waking a worker through
//! the kernel, which under a hypervisor costs an inter-processor interrupt: `perf` put 15% of
//! a 17-token BERT pass in those wake-ups, and the quantized kernel's threads of a 16-sequence
//! decode step were busy 70% of its regions' time.
//!
//! The team's workers poll for a new region for [`SPIN`] after each one (yielding the core
//! to any other runnable thread while they do), then sleep. The caller never waits for a
//! worker that has not joined: it takes the region's tasks itself from a shared counter, so a
//! sleeping or descheduled worker delays nothing, and only workers that took a task are
//! waited for.
//!
//! Which thread runs which task is not fixed, so a task must compute its outputs the same way
//! wherever it runs; every kernel here does (each task owns whole rows, columns or heads).

use std::any::Any;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a worker polls for the next region before it sleeps. A decode step's or a short
/// sentence's regions follow each other within microseconds; longer gaps (between requests)
/// end in sleep, so an idle server does not burn its cores.
const SPIN: Duration = Duration::from_micros(300);

/// `state`: the number of workers inside the open region in the low bits, whether a region
/// is open, and the region's number above.
const ACTIVE: u64 = (1 << 16) - 1;
const OPEN: u64 = 1 << 16;
const EPOCH: u64 = 1 << 17;

/// One parallel region, on its caller's stack.
struct Region<'a> {
    run: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    /// Threads that may work on the region (the caller and the workers).
    threads: usize,
    next: NextTask,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// The next task's index, on a cache line of its own: the caller's stack around it is written
/// while the workers take tasks.
#[repr(align(64))]
struct NextTask(AtomicUsize);

impl Region<'_> {
    /// The next run of tasks: half of what is left divided among the threads, at least one
    /// (guided scheduling). A decode step's bands take a fraction of a microsecond each, so
    /// taking them one by one made the two threads fight over the counter's cache line; large
    /// runs first and single tasks at the end keep the claims few and the finish even.
    fn take(&self) -> Option<std::ops::Range<usize>> {
        let mut start = self.next.0.load(Ordering::Relaxed);
        loop {
            if start >= self.tasks {
                return None;
            }
            let count = ((self.tasks - start) / (2 * self.threads)).max(1);
            match self.next.0.compare_exchange_weak(
                start,
                start + count,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(start..start + count),
                Err(now) => start = now,
            }
        }
    }

    /// Takes and runs tasks until none is left; a panic is kept for the caller to rethrow.
    fn work(&self) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while let Some(tasks) = self.take() {
                tasks.for_each(self.run);
            }
        }));
        if let Err(payload) = result {
            // The other threads stop taking tasks; the caller rethrows.
            self.next.0.store(self.tasks, Ordering::Relaxed);
            self.panic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(payload);
        }
    }
}

struct Team {
    workers: usize,
    state: AtomicU64,
    /// The open region; a worker reads it only after joining through `state`.
    region: AtomicPtr<Region<'static>>,
    /// One caller at a time; the others run their regions alone.
    busy: AtomicBool,
    /// Set by [`rest`]: polling workers go to sleep at once.
    resting: AtomicBool,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

thread_local! {
    /// Set on the team's workers and on a caller inside its region: a nested region runs
    /// on its thread alone.
    static IN_REGION: Cell<bool> = const { Cell::new(false) };
}

static TEAM: OnceLock<&'static Team> = OnceLock::new();

fn team() -> &'static Team {
    TEAM.get_or_init(|| {
        // As many threads as rayon's pool, which the CLI sizes (RAYON_NUM_THREADS).
        let workers = rayon::current_num_threads().saturating_sub(1);
        let team: &'static Team = Box::leak(Box::new(Team {
            workers,
            state: AtomicU64::new(0),
            region: AtomicPtr::new(std::ptr::null_mut()),
            busy: AtomicBool::new(false),
            resting: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for i in 0..workers {
            // Without its worker the team still works: the caller runs every task.
            let _ = std::thread::Builder::new()
                .name(format!("girder-team-{i}"))
                .spawn(move || team.serve());
        }
        team
    })
}

impl Team {
    fn serve(&self) {
        IN_REGION.with(|f| f.set(true));
        let mut last_epoch = 0;
        loop {
            if !self.poll(&mut last_epoch) {
                self.sleep_until_open(last_epoch);
            }
        }
    }

    /// Polls for a region for [`SPIN`] and works on it; false when none came.
    fn poll(&self, last_epoch: &mut u64) -> bool {
        let deadline = Instant::now() + SPIN;
        let mut polls = 0u32;
        loop {
            if self.try_join(last_epoch) {
                return true;
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(64) {
                if Instant::now() >= deadline || self.resting.load(Ordering::Relaxed) {
                    return false;
                }
                // Another thread waiting for this core (rayon's, the server's) gets it.
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
    }

    fn sleep_until_open(&self, last_epoch: u64) {
        let mut guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        while !self.open_for(last_epoch, self.state.load(Ordering::SeqCst)) {
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    fn open_for(&self, last_epoch: u64, state: u64) -> bool {
        state & OPEN != 0 && state / EPOCH != last_epoch
    }

    /// Joins the open region this worker has not joined yet and works on it.
    fn try_join(&self, last_epoch: &mut u64) -> bool {
        let state = self.state.load(Ordering::Acquire);
        if !self.open_for(*last_epoch, state) {
            return false;
        }
        // Joining is one step with the region still open: the caller, which closes it, then
        // waits for this worker.
        if self
            .state
            .compare_exchange(state, state + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        *last_epoch = state / EPOCH;
        // SAFETY: the region stays alive until the caller has seen this worker leave.
        let region = unsafe { &*self.region.load(Ordering::Acquire) };
        region.work();
        self.state.fetch_sub(1, Ordering::Release);
        true
    }
}

/// The threads a region runs on: the workers and the caller.
pub(crate) fn threads() -> usize {
    team().workers + 1
}

/// Runs `f(0)`, …, `f(tasks − 1)` on the team, the calling thread included, and returns when
/// all have run. A panic in a task is rethrown here after the others have stopped.
pub(crate) fn for_each(tasks: usize, f: impl Fn(usize) + Sync) {
    let alone = || (0..tasks).for_each(&f);
    if tasks <= 1 || IN_REGION.with(Cell::get) {
        return alone();
    }
    let team = team();
    if team.workers == 0
        || team
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return alone();
    }
    let run: &(dyn Fn(usize) + Sync) = &f;
    let region = Region {
        // SAFETY: the region (and `f`) outlive every worker's use of them: `Close` waits for
        // the workers that joined, and no worker joins after it has closed the region.
        run: unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(run)
        },
        tasks,
        threads: team.workers + 1,
        next: NextTask(AtomicUsize::new(0)),
        panic: Mutex::new(None),
    };
    team.region.store(
        &region as *const Region as *mut Region<'static>,
        Ordering::Release,
    );
    team.resting.store(false, Ordering::Relaxed);
    let epoch = team.state.load(Ordering::Relaxed) / EPOCH + 1;
    team.state.store((epoch * EPOCH) | OPEN, Ordering::SeqCst);
    if team.sleepers.load(Ordering::SeqCst) > 0 {
        let _guard = team.sleep.lock().unwrap_or_else(|e| e.into_inner());
        team.wake.notify_all();
    }
    /// Closes the region and waits for the workers inside it, also when the caller unwinds.
    struct Close(&'static Team);
    impl Drop for Close {
        fn drop(&mut self) {
            let team = self.0;
            team.state.fetch_and(!OPEN, Ordering::AcqRel);
            let mut polls = 0u32;
            while team.state.load(Ordering::Acquire) & ACTIVE != 0 {
                polls = polls.wrapping_add(1);
                if polls.is_multiple_of(64) {
                    std::thread::yield_now();
                }
                std::hint::spin_loop();
            }
            IN_REGION.with(|f| f.set(false));
            team.busy.store(false, Ordering::Release);
        }
    }
    let close = Close(team);
    IN_REGION.with(|f| f.set(true));
    region.work();
    drop(close);
    if let Some(payload) = region.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        std::panic::resume_unwind(payload);
    }
}

/// Sends the team's polling workers to sleep until the next region: called before work that
/// another pool's threads share (candle's matmul on rayon), so that a polling worker does not
/// compete with them for the cores. (`perf` on workload (a) of the encoder benchmark, 32
/// sentences through candle's GEMM between girder's kernels: the polling loop's share of the
/// samples fell from 1.5% to 0.5%.)
pub(crate) fn rest() {
    if let Some(team) = TEAM.get() {
        team.resting.store(true, Ordering::Relaxed);
    }
}

/// An output buffer the tasks of one region write at places of their own (each task its
/// columns), shared with them as a raw pointer.
pub(crate) struct SharedOutput(pub(crate) *mut f32);

// SAFETY: the region's tasks write disjoint elements (each kernel's contract), and the
// buffer outlives the region.
unsafe impl Sync for SharedOutput {}

/// A mutable slice whose disjoint chunks the tasks of one region write.
pub(crate) struct Chunks<'a, T> {
    ptr: *mut T,
    len: usize,
    size: usize,
    _slice: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: each chunk is handed to one task only (see `chunk`).
unsafe impl<T: Send> Sync for Chunks<'_, T> {}

impl<'a, T> Chunks<'a, T> {
    /// `data` in chunks of `size` elements (the last one shorter).
    pub(crate) fn new(data: &'a mut [T], size: usize) -> Self {
        Chunks {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            size: size.max(1),
            _slice: std::marker::PhantomData,
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.len.div_ceil(self.size)
    }

    /// Chunk `i`.
    ///
    /// # Safety
    /// Each `i` is asked for once while the chunks are alive (each task its own).
    #[allow(clippy::mut_from_ref)] // disjoint by the contract above
    pub(crate) unsafe fn chunk(&self, i: usize) -> &'a mut [T] {
        let start = (i * self.size).min(self.len);
        let end = (start + self.size).min(self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(start), end - start)
    }
}

/// `f(i, chunk)` for every chunk of `size` elements of `data`, on the team.
pub(crate) fn for_each_chunk<T: Send>(
    data: &mut [T],
    size: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunks = Chunks::new(data, size);
    // SAFETY: `for_each` runs each index once.
    for_each(chunks.count(), |i| f(i, unsafe { chunks.chunk(i) }));
}

/// A vector of `len` values whose chunk `i` of `size` is written by `f(i, chunk)` on the
/// team; `f` must write every element of its chunk. The vector is not zeroed first: for a
/// prompt's activations that was a pass over megabytes per layer on the calling thread
/// alone (perf: 3% of a 432-token prefill in `memset`).
pub(crate) fn collect_chunks<T: Send>(
    len: usize,
    size: usize,
    f: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    for_each_chunk(&mut out.spare_capacity_mut()[..len], size, f);
    // SAFETY: the chunks cover `..len` and `f` wrote each of their elements.
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for tasks in [0, 1, 2, 7, 1000] {
            let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for_each(tasks, |i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn chunks_cover_the_slice() {
        let mut data = vec![0usize; 1001];
        for_each_chunk(&mut data, 10, |i, chunk| {
            chunk.iter_mut().for_each(|x| *x += i)
        });
        assert!(data.iter().enumerate().all(|(j, &x)| x == j / 10));
    }

    #[test]
    fn collected_chunks_hold_what_the_tasks_wrote() {
        let data = collect_chunks(1001, 10, |i, chunk| {
            for (j, x) in chunk.iter_mut().enumerate() {
                x.write(i * 10 + j);
            }
        });
        assert_eq!(data, (0..1001).collect::<Vec<_>>());
        assert!(collect_chunks::<u8>(0, 4, |_, _| {}).is_empty());
    }

    #[test]
    fn a_nested_region_runs_inline() {
        let total = AtomicUsize::new(0);
        for_each(8, |_| {
            for_each(8, |_| {
                total.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(total.load(Ordering::Relaxed), 64);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_team_goes_on() {
        let result = std::panic::catch_unwind(|| {
            for_each(64, |i| {
                if i == 40 {
                    panic!("task 40");
                }
            })
        });
        assert!(result.is_err());
        let total = AtomicUsize::new(0);
        for_each(64, |_| {
            total.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 64);
    }

    #[test]
    fn concurrent_callers_all_finish() {
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let total = AtomicUsize::new(0);
                        for_each(16, |_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                        assert_eq!(total.load(Ordering::Relaxed), 16);
                    }
                });
            }
        });
    }
}
