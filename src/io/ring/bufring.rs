//! One provided-buffer ring (IORING_REGISTER_PBUF_RING): the ring of
//! descriptors the kernel takes buffers from, and the buffers themselves,
//! one per core.
//!
//! Both live in anonymous mappings owned by [`BufRing`]; the kernel reads
//! the descriptors and writes into the buffers for as long as the group is
//! registered and an operation that selected a buffer is in flight. The
//! owner (`machine::Machine`) drops the io_uring (which unregisters the
//! group) before this, and leaks the mappings if operations may still be
//! in flight (see its Drop). The first page of every buffer is touched when
//! the ring is made, so that the memory a core's ring costs shows at start,
//! not as connections come.
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring7 as iou;
use iou::types::BufRingEntry;

/// An anonymous private mapping of `len` bytes, unmapped on drop unless
/// leaked.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh anonymous mapping: no existing memory is touched;
        // the returned range belongs to this `Mapping` until it is unmapped.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p.cast(), len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr..ptr+len` is the mapping this value created and
            // owns; whoever could still write to it (the kernel) has been
            // stopped by the owner before drop, or the mapping was leaked
            // (ptr set to null).
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

pub(crate) struct BufRing {
    ring: Mapping,
    bufs: Mapping,
    /// Ring entries (a power of two, >= count).
    entries: u16,
    /// Number of buffers.
    count: u16,
    size: u32,
    /// Our copy of the tail (published with `publish`).
    tail: u16,
    /// Buffers we believe are in the ring (pushed, not yet seen in a CQE).
    pub in_ring: u32,
    pub bgid: u16,
}

impl BufRing {
    /// `count` buffers of `size` bytes (both at least 1, `count` at most
    /// 32768) as buffer group `bgid`.
    pub fn new(count: u16, size: u32, bgid: u16) -> io::Result<BufRing> {
        assert!(count > 0 && count <= 32768 && size > 0);
        let entries = count.next_power_of_two();
        let page = 4096usize;
        let ring_len =
            (entries as usize * std::mem::size_of::<BufRingEntry>()).div_ceil(page) * page;
        let bufs_len = (count as usize * size as usize).div_ceil(page) * page;
        let mut r = BufRing {
            ring: Mapping::new(ring_len)?,
            bufs: Mapping::new(bufs_len)?,
            entries,
            count,
            size,
            tail: 0,
            in_ring: 0,
            bgid,
        };
        for bid in 0..count {
            r.push(bid);
            // SAFETY: in bounds of the buffers mapping owned by `r`, which
            // the kernel does not know of yet.
            unsafe { r.bufs.ptr.add(bid as usize * size as usize).write(0) };
        }
        r.publish();
        Ok(r)
    }

    /// Register with `ring` as group `bgid`.
    pub fn register(&self, sub: &iou::Submitter<'_>) -> io::Result<()> {
        // SAFETY: the descriptor ring is a page-aligned mapping owned by
        // `self` of `entries` entries; it stays mapped while registered
        // because the io_uring is dropped before `self` (field order in
        // Core) or the mapping is leaked.
        unsafe {
            sub.register_buf_ring_with_flags(self.ring.ptr as u64, self.entries, self.bgid, 0)
        }
    }

    /// How many buffers there are.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Bytes per buffer.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Give buffer `bid` back to the kernel (visible after `publish`).
    pub fn push(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        let idx = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: `idx < entries`, so the entry lies inside the ring mapping
        // owned by self. The kernel only reads entries between its head and
        // the published tail; this slot is at or past the published tail, so
        // the kernel does not read it until `publish`. The setters leave the
        // `resv` field (which is the shared tail in entry 0) untouched.
        unsafe {
            let e = &mut *(self.ring.ptr as *mut BufRingEntry).add(idx);
            e.set_addr(self.bufs.ptr.add(bid as usize * self.size as usize) as u64);
            e.set_len(self.size);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        self.in_ring += 1;
    }

    /// Make pushed buffers visible to the kernel.
    pub fn publish(&self) {
        // SAFETY: the tail field is the `resv` u16 of entry 0, inside the
        // ring mapping owned by self; it is 2-byte aligned, and the kernel
        // reads it atomically (smp_load_acquire), so an atomic release store
        // is the documented way to publish the entries written before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.ptr as *const BufRingEntry) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// A buffer the kernel filled (`bid` from a CQE) was taken from the ring.
    pub fn taken(&mut self) {
        self.in_ring = self.in_ring.saturating_sub(1);
    }

    /// Address of byte `off` of buffer `bid`.
    pub fn ptr(&self, bid: u16, off: u32) -> *const u8 {
        debug_assert!(bid < self.count && off <= self.size);
        // SAFETY: bid < count and off <= size, so the result is inside (or
        // one past the end of a buffer inside) the buffers mapping.
        unsafe {
            self.bufs
                .ptr
                .add(bid as usize * self.size as usize + off as usize)
        }
    }

    /// Bytes `off..off+len` of buffer `bid`, which the kernel has filled and
    /// handed to us in a CQE (so it does not write there until the buffer is
    /// pushed back).
    pub fn slice(&self, bid: u16, off: u32, len: u32) -> &[u8] {
        assert!(bid < self.count && off as u64 + len as u64 <= self.size as u64);
        // SAFETY: in bounds (checked above) of the buffers mapping owned by
        // self. The buffer is ours between its CQE and its `push` (the
        // kernel only writes into buffers it takes from the ring), and the
        // returned borrow of `self` prevents `push` while it is alive.
        unsafe { std::slice::from_raw_parts(self.ptr(bid, off), len as usize) }
    }

    /// Keep the mappings alive forever (the kernel may still write).
    pub fn leak(&mut self) {
        self.ring.ptr = std::ptr::null_mut();
        self.bufs.ptr = std::ptr::null_mut();
    }
}
