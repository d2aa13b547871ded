//! A core's pool of pipes for splice (`io::splice`): made when the core
//! starts, so that their descriptors are counted once, at start; each is
//! taken by a tunnel direction only while bytes are in it.

use std::cell::RefCell;
use std::os::fd::OwnedFd;

use crate::sys;

/// One pipe: its read and write ends.
#[derive(Debug)]
pub struct Pipe {
    pub rd: OwnedFd,
    pub wr: OwnedFd,
}

/// A core's pipes, made at start; taken only while bytes are in them.
#[derive(Debug, Default)]
pub struct Pipes {
    free: RefCell<Vec<Pipe>>,
}

impl Pipes {
    /// `n` pipes. A pipe that cannot be made is left out (the log says
    /// why): tunnels then copy more often, nothing fails.
    pub fn new(n: usize) -> Pipes {
        let mut free = Vec::with_capacity(n);
        for _ in 0..n {
            match sys::pipe() {
                Ok((rd, wr)) => free.push(Pipe { rd, wr }),
                Err(e) => {
                    log::warn!("cannot make a pipe for splice ({e}); tunnels will copy");
                    break;
                }
            }
        }
        Pipes {
            free: RefCell::new(free),
        }
    }

    pub fn take(&self) -> Option<Pipe> {
        self.free.borrow_mut().pop()
    }

    /// Give back a pipe that is empty.
    pub fn give(&self, pipe: Pipe) {
        self.free.borrow_mut().push(pipe);
    }

    /// A pipe that may still hold bytes (its transfer failed half way) is
    /// never given back, where the next tunnel would send them on: it is
    /// closed, and a new one takes its place in the pool.
    pub fn discard(&self, pipe: Pipe) {
        drop(pipe);
        match sys::pipe() {
            Ok((rd, wr)) => self.give(Pipe { rd, wr }),
            Err(e) => log::warn!("cannot make a pipe for splice ({e}); the pool is one smaller"),
        }
    }

    /// Pipes free now.
    pub fn free(&self) -> usize {
        self.free.borrow().len()
    }
}
