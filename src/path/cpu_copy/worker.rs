//! The copy thread: map the client's dma-buf, bracket the reads with `DMA_BUF_IOCTL_SYNC`
//! (START|READ … END|READ), and copy the damaged rows straight into the surface's shadow. The
//! same thread runs the cache maintenance of DirectWithMaintenance buffers
//! ([`crate::path::maintenance`]), which is the same bracket without the reads. Jobs arrive over
//! a channel and go back over another, so a slow (uncached, write-combined) read never holds up
//! the event loop, except a frame that draws that very surface meanwhile, which waits for the
//! shadow's lock. One thread, first in first out: a surface's copies run in the order they were
//! handed over.

use std::sync::mpsc;
use std::thread::JoinHandle;

use smithay::backend::allocator::dmabuf::{Dmabuf, DmabufSyncFlags};
use smithay::backend::allocator::Buffer as _;
use smithay::reexports::calloop::channel;
use smithay::utils::{Buffer as BufferCoords, Rectangle};

use smithay::backend::renderer::element::memory::MemoryRenderBuffer;

use super::rows::{copy_rects, Plane, Reads};
use super::CopyError;

/// One commit's copy: which rectangles of which buffer, into which shadow.
#[derive(Debug)]
pub struct CopyJob {
    /// The commit wait this job belongs to (see `crate::commit`).
    pub id: u64,
    /// Its place in the surface's order of copies.
    pub seq: u64,
    /// The buffer to read.
    pub dmabuf: Dmabuf,
    /// The rectangles to copy.
    pub rects: Vec<Rectangle<i32, BufferCoords>>,
    /// Bytes per pixel.
    pub cpp: usize,
    /// How to read the buffer's memory.
    pub reads: Reads,
    /// The shadow to write.
    pub target: MemoryRenderBuffer,
    /// The shadow's bytes per row.
    pub target_stride: usize,
}

/// What came back for job `id`.
#[derive(Debug)]
pub struct CopyDone {
    /// The wait the copy belongs to.
    pub id: u64,
    /// The copy's place in its surface's order.
    pub seq: u64,
    /// The bytes copied, or why nothing was.
    pub result: Result<u64, CopyError>,
}

/// Work for the thread.
#[derive(Debug)]
pub enum Job {
    /// A CPU copy.
    Copy(CopyJob),
    /// Cache maintenance before scanout.
    Maintain(crate::path::maintenance::MaintainJob),
}

/// What the thread did.
#[derive(Debug)]
pub enum Done {
    /// A copy came back.
    Copy(CopyDone),
    /// Maintenance is done.
    Maintained(crate::path::maintenance::MaintainDone),
}

impl Job {
    /// The commit wait the job belongs to.
    pub fn id(&self) -> u64 {
        match self {
            Job::Copy(j) => j.id,
            Job::Maintain(j) => j.id,
        }
    }
}

/// The copy thread. Dropping it closes the job channel and joins the thread.
#[derive(Debug)]
pub struct CopyWorker {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl CopyWorker {
    /// Starts the thread; results go to `done` (a calloop channel the event loop watches).
    pub fn spawn(done: channel::Sender<Done>) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new().name("cohere-cpu-copy".into()).spawn(move || {
            for job in rx {
                let result = match job {
                    Job::Copy(mut job) => {
                        let result = copy(&mut job);
                        Done::Copy(CopyDone { id: job.id, seq: job.seq, result })
                    }
                    Job::Maintain(job) => Done::Maintained(crate::path::maintenance::run(job)),
                };
                if done.send(result).is_err() {
                    break;
                }
            }
        })?;
        Ok(Self { jobs: Some(jobs), thread: Some(thread) })
    }

    /// Queues `job`; gives it back if the thread is gone.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

impl Drop for CopyWorker {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `job`: maps plane 0 from offset 0 (an unaligned plane offset can't be mmapped),
/// brackets the reads with SYNC, and copies the job's rectangles into its shadow. Returns the
/// bytes copied.
pub fn copy(job: &mut CopyJob) -> Result<u64, CopyError> {
    let dmabuf = &job.dmabuf;
    let (Some(fd), Some(offset), Some(stride)) = (dmabuf.handles().next(), dmabuf.offsets().next(), dmabuf.strides().next()) else {
        return Err(CopyError::Format(dmabuf.format().code));
    };
    let (offset, stride) = (offset as usize, stride as usize);
    let need = offset as u64 + stride as u64 * u64::from(dmabuf.height());
    let have = rustix::fs::seek(fd, rustix::fs::SeekFrom::End(0)).map_err(CopyError::Map)?;
    let _ = rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(0));
    if need > have {
        return Err(CopyError::Size { need, have });
    }
    // The commit waited for the buffer's acquire fence. SYNC(START) would wait for a write
    // fence added since (a client writing a buffer it handed over): refuse instead.
    if crate::sync::is_being_written(dmabuf) {
        return Err(CopyError::Fenced);
    }
    let len = need as usize;
    // SAFETY: a fresh shared read-only mapping of `len` bytes, which the fd's size covers; it
    // is only read through the slice below and unmapped before returning.
    let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, rustix::mm::ProtFlags::READ, rustix::mm::MapFlags::SHARED, fd, 0) }
        .map_err(CopyError::Map)?;
    // SAFETY: the mapping above is `len` readable bytes and lives until munmap below.
    let src = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    let result = (|| {
        dmabuf.sync_plane(0, DmabufSyncFlags::START | DmabufSyncFlags::READ).map_err(|e| CopyError::Sync(e.to_string()))?;
        let mut copied = 0;
        let mut shadow = job.target.render();
        let _ = shadow.draw(|dst: &mut [u8]| -> Result<Vec<Rectangle<i32, BufferCoords>>, std::convert::Infallible> {
            let mut dst = Plane { bytes: dst, offset: 0, stride: job.target_stride };
            copied = copy_rects(&Plane { bytes: src, offset, stride }, &mut dst, &job.rects, job.cpp, job.reads);
            Ok(job.rects.clone())
        });
        // The shadow's lock goes (and its damage is recorded) before the bracket closes.
        drop(shadow);
        dmabuf.sync_plane(0, DmabufSyncFlags::END | DmabufSyncFlags::READ).map_err(|e| CopyError::Sync(e.to_string()))?;
        Ok(copied)
    })();
    // SAFETY: unmaps exactly the mapping made above; `src` is not used after this.
    let _ = unsafe { rustix::mm::munmap(ptr, len) };
    result
}
