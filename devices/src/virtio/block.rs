//! virtio-blk backed by a host file.
//!
//! * `cache=writeback` (the default) offers VIRTIO_BLK_F_FLUSH, and a guest flush completes
//!   only after fsync(2) returned: what the guest flushed survives a host crash.
//! * `cache=unsafe` offers no flush: writes reach the page cache and nothing more.
//! * `readonly` offers VIRTIO_BLK_F_RO and fails writes with IOERR.
//! * An image is locked with flock(2): exclusive when writable, shared when read-only, so two
//!   VMs cannot open one writable image.
//!
//! Data moves between the file and guest memory with pread/pwrite straight on the guest's
//! buffers. Every request is checked: header size, status byte, sector range against the
//! capacity, data length a multiple of 512.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vm_memory::VolatileSlice;

use super::counters::{bump, VirtioCounters};
use super::queue::{DescriptorChainView, RequestQueue};
use super::{device_type, features, ActivateError, Activation, Memory, VirtioDevice};
use crate::log::RateLimited;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZES: [u16; 1] = [256];

/// Feature: the device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: the device supports flush.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Feature: seg_max in config is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// Bytes of a device id string (VIRTIO_BLK_T_GET_ID).
const ID_BYTES: usize = 20;

static LOG: RateLimited = RateLimited::new();

/// How writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Flush offered; a guest flush reaches fsync before it completes.
    #[default]
    Writeback,
    /// No flush offered; nothing is synced.
    Unsafe,
}

/// A block device's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// The image file.
    pub path: PathBuf,
    /// Refuse writes.
    pub readonly: bool,
    /// Cache mode.
    pub cache: CacheMode,
}

/// Why an image cannot back a device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The file cannot be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the lock.
    #[error("disk image {path} is in use by another VM (it holds the image's lock); stop that VM or attach the image read-only in both")]
    Locked {
        /// The image.
        path: PathBuf,
    },
    /// Not a regular file or block device, or empty.
    #[error("disk image {path} {what}; give a raw image file of at least 512 bytes")]
    Unusable {
        /// The image.
        path: PathBuf,
        /// What is wrong with it.
        what: &'static str,
    },
}

/// The block device.
pub struct Block {
    file: File,
    config: BlockConfig,
    capacity_sectors: u64,
    id: [u8; ID_BYTES],
    counters: Arc<VirtioCounters>,
    active: Option<RequestQueue>,
}

fn open_image(config: &BlockConfig) -> Result<File, BlockError> {
    let path = &config.path;
    let file = OpenOptions::new()
        .read(true)
        .write(!config.readonly)
        .open(path)
        .map_err(|source| BlockError::Open {
            path: path.clone(),
            source,
        })?;
    let op = if config.readonly {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            BlockError::Locked { path: path.clone() }
        } else {
            BlockError::Open {
                path: path.clone(),
                source: e,
            }
        });
    }
    Ok(file)
}

fn image_size(file: &File, path: &Path) -> Result<u64, BlockError> {
    let meta = file.metadata().map_err(|source| BlockError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let unusable = |what| BlockError::Unusable {
        path: path.to_path_buf(),
        what,
    };
    if meta.is_dir() {
        return Err(unusable("is a directory"));
    }
    // Regular files report their size; block devices report theirs through seeking.
    let size = if meta.file_type().is_file() {
        meta.len()
    } else {
        use std::io::Seek;
        let mut f = file;
        f.seek(std::io::SeekFrom::End(0))
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?
    };
    if size < SECTOR_SIZE {
        return Err(unusable("is smaller than one 512-byte sector"));
    }
    Ok(size)
}

/// Result of one request: status byte and data bytes written to the guest.
struct Outcome {
    status: u8,
    data_written: u32,
}

impl Outcome {
    fn status(status: u8) -> Outcome {
        Outcome {
            status,
            data_written: 0,
        }
    }
}

/// Runs pread/pwrite over `slices` from file offset `offset`; false on any short or failed
/// transfer.
fn transfer(file: &File, slices: &[VolatileSlice<'_, ()>], mut offset: u64, write: bool) -> bool {
    for slice in slices {
        let guard = slice.ptr_guard_mut();
        let (ptr, len) = (guard.as_ptr(), slice.len());
        let mut done = 0usize;
        while done < len {
            // SAFETY: `ptr..ptr+len` is a live guest-memory mapping (the slice was checked
            // against one region when the chain was validated, and the guard keeps it);
            // pread writes and pwrite reads at most `len - done` bytes from `ptr + done`.
            let n = unsafe {
                let at = ptr.add(done).cast();
                if write {
                    libc::pwrite64(file.as_raw_fd(), at, len - done, offset as i64)
                } else {
                    libc::pread64(file.as_raw_fd(), at, len - done, offset as i64)
                }
            };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                return false;
            }
            done += n as usize;
            offset += n as u64;
        }
    }
    true
}

impl Block {
    /// Opens and locks the image.
    pub fn new(config: BlockConfig) -> Result<Block, BlockError> {
        let file = open_image(&config)?;
        let size = image_size(&file, &config.path)?;
        let mut id = [0u8; ID_BYTES];
        // The id is the file name, truncated: enough for /dev/disk/by-id to tell disks apart.
        let name = config
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let n = name.len().min(ID_BYTES);
        id[..n].copy_from_slice(&name.as_bytes()[..n]);
        Ok(Block {
            file,
            capacity_sectors: size / SECTOR_SIZE,
            config,
            id,
            counters: Arc::new(VirtioCounters::default()),
            active: None,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// The device's settings.
    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    fn config_bytes(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        // size_max (8..12) stays 0 (not offered); seg_max at 12.
        let seg_max = u32::from(QUEUE_SIZES[0]) - 2;
        c[12..16].copy_from_slice(&seg_max.to_le_bytes());
        c
    }

    /// Serves one validated request; the caller writes the status byte.
    fn execute(&self, mem: &Memory, chain: &DescriptorChainView, data_len: u64) -> Outcome {
        let mut header = [0u8; 16];
        match chain.read_at(mem, 0, &mut header) {
            Ok(16) => {}
            _ => return Outcome::status(S_IOERR),
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        match kind {
            T_IN | T_OUT => self.read_write(mem, chain, kind == T_OUT, sector, data_len),
            T_FLUSH => {
                if self.config.cache == CacheMode::Writeback {
                    if self.file.sync_all().is_err() {
                        bump(&self.counters.io_errors, 1);
                        return Outcome::status(S_IOERR);
                    }
                    bump(&self.counters.flushes, 1);
                }
                Outcome::status(S_OK)
            }
            // The id goes before the status byte (the chain's last writable byte), cut
            // short when the driver's buffer is smaller than the 20 bytes.
            T_GET_ID => match chain.write_at(mem, 0, &self.id[..id_room(data_len)]) {
                Ok(n) => Outcome {
                    status: S_OK,
                    data_written: n as u32,
                },
                Err(_) => Outcome::status(S_IOERR),
            },
            _ => {
                bump(&self.counters.unsupported_requests, 1);
                Outcome::status(S_UNSUPP)
            }
        }
    }

    fn read_write(
        &self,
        mem: &Memory,
        chain: &DescriptorChainView,
        write: bool,
        sector: u64,
        data_len: u64,
    ) -> Outcome {
        if write && self.config.readonly {
            bump(&self.counters.io_errors, 1);
            return Outcome::status(S_IOERR);
        }
        let end = sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(data_len));
        let in_range = end.is_some_and(|end| end <= self.capacity_sectors * SECTOR_SIZE);
        if data_len % SECTOR_SIZE != 0 || !in_range {
            bump(&self.counters.io_errors, 1);
            LOG.warn(format_args!(
                "virtio-blk: request for {data_len} bytes at sector {sector} is outside the {}-sector disk or not whole sectors",
                self.capacity_sectors
            ));
            return Outcome::status(S_IOERR);
        }
        let offset = sector * SECTOR_SIZE;
        let slices = if write {
            chain.readable_slices(mem, 16)
        } else {
            chain.writable_slices(mem, 0)
        };
        let Ok(mut slices) = slices else {
            return Outcome::status(S_IOERR);
        };
        if !write {
            // The last writable byte is the status, not data.
            trim_total(&mut slices, data_len);
        }
        if !transfer(&self.file, &slices, offset, write) {
            bump(&self.counters.io_errors, 1);
            return Outcome::status(S_IOERR);
        }
        if write {
            bump(&self.counters.write_bytes, data_len);
            Outcome::status(S_OK)
        } else {
            bump(&self.counters.read_bytes, data_len);
            Outcome {
                status: S_OK,
                data_written: data_len as u32,
            }
        }
    }

    fn serve(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        active.drain(&self.counters, &LOG, "blk", |mem, chain| {
            self.request(mem, chain)
        });
        self.active = Some(active);
    }

    /// Checks the request's shape, runs it and writes the status; returns the used length.
    fn request(&self, mem: &Memory, chain: &DescriptorChainView) -> u32 {
        let writable = chain.writable_len();
        if chain.readable_len() < 16 || writable == 0 {
            bump(&self.counters.malformed_chains, 1);
            LOG.warn(format_args!(
                "virtio-blk: request without a 16-byte header or a status byte refused"
            ));
            return 0;
        }
        let readable_data = chain.readable_len() - 16;
        let mut header = [0u8; 4];
        let _ = chain.read_at(mem, 0, &mut header);
        let data_len = if u32::from_le_bytes(header) == T_OUT {
            readable_data
        } else {
            writable - 1
        };
        let outcome = self.execute(mem, chain, data_len);
        let status_at = writable - 1;
        if chain.write_at(mem, status_at, &[outcome.status]).is_err() {
            bump(&self.counters.malformed_chains, 1);
            return 0;
        }
        bump(&self.counters.requests, 1);
        // Used length: data written to the guest plus the status byte.
        outcome.data_written.saturating_add(1)
    }
}

/// Bytes of the device id that fit in `data_len` writable bytes before the status.
fn id_room(data_len: u64) -> usize {
    usize::try_from(data_len).map_or(ID_BYTES, |n| n.min(ID_BYTES))
}

/// Cuts `slices` so they add up to `total` bytes.
fn trim_total(slices: &mut Vec<VolatileSlice<'_, ()>>, total: u64) {
    let mut left = total as usize;
    let mut keep = Vec::with_capacity(slices.len());
    for s in slices.drain(..) {
        if left == 0 {
            break;
        }
        let n = s.len().min(left);
        left -= n;
        keep.push(s.subslice(0, n).unwrap_or(s));
    }
    *slices = keep;
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn name(&self) -> &'static str {
        "block"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn offered_features(&self) -> u64 {
        let mut f = features::VERSION_1 | features::RING_EVENT_IDX | VIRTIO_BLK_F_SEG_MAX;
        if self.config.readonly {
            f |= VIRTIO_BLK_F_RO;
        }
        if self.config.cache == CacheMode::Writeback {
            f |= VIRTIO_BLK_F_FLUSH;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| config.get(at as usize))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(RequestQueue::from_activation(activation, "block")?);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_notified(&mut self, _index: usize) {
        self.serve();
    }

    fn counters(&self) -> Arc<VirtioCounters> {
        self.counters.clone()
    }
}
