//! Free lists: doubly linked lists threaded through the frame metadata array.
//!
//! A [`FreeArea`] holds the free blocks of one order (or the free pages of the huge page pool)
//! in two lists: blocks known to be zero and the others. Placement decides which list a block
//! goes on; within each list, reported blocks sit at the tail and are handed out last, as in
//! Linux. Unreported blocks therefore always form a prefix of each list, which is what lets the
//! reporting engine find candidates in O(1).

use crate::frame::{FrameFlags, FrameMeta, NIL};

/// The two lists of a free area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListKind {
    /// Blocks not sorted by content: every block under Linux placement, the blocks not known
    /// to be zero under zero-aware placement.
    Unsorted = 0,
    /// Blocks known to be zero (zero-aware placement only).
    Zeroed = 1,
}

impl ListKind {
    /// Both kinds, in the order a reporting pass or a check walks them.
    pub const ALL: [ListKind; 2] = [ListKind::Unsorted, ListKind::Zeroed];

    /// The order in which an allocation searches the two lists: known-zero blocks first when
    /// it wants zeroed memory, the others first otherwise (so zeroed blocks are kept for the
    /// allocations they save work for). Under Linux placement the `Zeroed` list is empty and
    /// the preference changes nothing.
    pub const fn preference(prefer_zeroed: bool) -> [ListKind; 2] {
        if prefer_zeroed {
            [ListKind::Zeroed, ListKind::Unsorted]
        } else {
            [ListKind::Unsorted, ListKind::Zeroed]
        }
    }
}

/// The preferred free block in `areas` (ordered by increasing order): the head of the first
/// list kind of `preference` found in any area, smallest order first. Returns the position of
/// the area in `areas` and the block's frame index.
pub(crate) fn first_free(areas: &[FreeArea], preference: [ListKind; 2]) -> Option<(usize, u32)> {
    preference.iter().find_map(|&kind| {
        areas
            .iter()
            .enumerate()
            .find_map(|(i, area)| area.head(kind).map(|idx| (i, idx)))
    })
}

/// One intrusive list: head, tail and length in blocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FreeList {
    pub head: u32,
    pub tail: u32,
    pub len: u32,
}

impl FreeList {
    const EMPTY: FreeList = FreeList {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

/// The free blocks of one order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FreeArea {
    pub lists: [FreeList; 2],
}

impl FreeArea {
    pub const EMPTY: FreeArea = FreeArea {
        lists: [FreeList::EMPTY; 2],
    };

    /// Free blocks in this area.
    pub fn nr_free(&self) -> u32 {
        self.lists[0].len + self.lists[1].len
    }

    /// Links frame `idx` into list `kind`: at the tail if the block is reported, so that it is
    /// allocated last, else at the head.
    pub fn add(&mut self, meta: &mut [FrameMeta], kind: ListKind, idx: u32) {
        let list = &mut self.lists[kind as usize];
        let to_tail = meta[idx as usize].flags.contains(FrameFlags::REPORTED);
        if list.head == NIL {
            meta[idx as usize].next = NIL;
            meta[idx as usize].prev = NIL;
            list.head = idx;
            list.tail = idx;
        } else if to_tail {
            meta[idx as usize].prev = list.tail;
            meta[idx as usize].next = NIL;
            meta[list.tail as usize].next = idx;
            list.tail = idx;
        } else {
            meta[idx as usize].next = list.head;
            meta[idx as usize].prev = NIL;
            meta[list.head as usize].prev = idx;
            list.head = idx;
        }
        list.len += 1;
    }

    /// Unlinks frame `idx` from list `kind`.
    pub fn del(&mut self, meta: &mut [FrameMeta], kind: ListKind, idx: u32) {
        let list = &mut self.lists[kind as usize];
        let FrameMeta { next, prev, .. } = meta[idx as usize];
        if prev == NIL {
            list.head = next;
        } else {
            meta[prev as usize].next = next;
        }
        if next == NIL {
            list.tail = prev;
        } else {
            meta[next as usize].prev = prev;
        }
        meta[idx as usize].next = NIL;
        meta[idx as usize].prev = NIL;
        list.len -= 1;
    }

    /// The first block of list `kind`, if any.
    pub fn head(&self, kind: ListKind) -> Option<u32> {
        let head = self.lists[kind as usize].head;
        (head != NIL).then_some(head)
    }
}
