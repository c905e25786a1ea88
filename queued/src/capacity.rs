//! The queue's admission limit (`max_queue_items`), made atomic.
//!
//! The table of queued messages also counts the commits in progress: a
//! commit first reserves a [`Slot`] (checking and reserving under the
//! table's one lock), and the slot turns into the message's row when it is
//! queued, or is released when the commit fails or is abandoned. So
//! messages queued plus commits in progress never exceed the limit, however
//! many transactions finish at once.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};

/// The queued messages by ID, and the places reserved by commits in
/// progress. Derefs to the map.
pub struct Table<V> {
    map: HashMap<String, V>,
    reserved: usize,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            map: HashMap::new(),
            reserved: 0,
        }
    }
}

impl<V> Deref for Table<V> {
    type Target = HashMap<String, V>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<V> DerefMut for Table<V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

impl<V> Table<V> {
    /// Messages held plus places reserved: what the limit applies to.
    pub fn occupied(&self) -> usize {
        self.map.len() + self.reserved
    }

    /// Places reserved by commits in progress.
    #[cfg(test)]
    pub fn reserved(&self) -> usize {
        self.reserved
    }
}

fn lock<V>(table: &Mutex<Table<V>>) -> MutexGuard<'_, Table<V>> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

/// A place reserved in a [`Table`]: [`Slot::fill`] turns it into a row;
/// dropping it gives the place back.
pub struct Slot<'a, V> {
    table: &'a Mutex<Table<V>>,
    live: bool,
}

/// Reserve a place if fewer than `max` are occupied (check and reserve
/// under one lock).
pub fn try_reserve<V>(table: &Mutex<Table<V>>, max: usize) -> Option<Slot<'_, V>> {
    let mut t = lock(table);
    if t.occupied() >= max {
        return None;
    }
    t.reserved += 1;
    Some(Slot { table, live: true })
}

impl<V> Slot<'_, V> {
    /// Insert the row this place was reserved for (in the same critical
    /// section that gives the reservation back, so the count never dips
    /// or grows in between).
    pub fn fill(mut self, key: String, value: V) {
        let mut t = lock(self.table);
        t.reserved -= 1;
        t.map.insert(key, value);
        self.live = false;
    }
}

impl<V> Drop for Slot<'_, V> {
    fn drop(&mut self) {
        if self.live {
            lock(self.table).reserved -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    #[test]
    fn simultaneous_reservations_never_overshoot() {
        // 32 transactions pass the check at the same moment with room for
        // 5: exactly 5 get a place.
        let table = Arc::new(Mutex::new(Table::<u32>::default()));
        table.lock().unwrap().insert("old".into(), 0);
        let barrier = Arc::new(Barrier::new(32));
        let got = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..32)
            .map(|i| {
                let (table, barrier, got) = (table.clone(), barrier.clone(), got.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let slot = try_reserve(&table, 6);
                    // Everyone has tried before anyone fills or releases.
                    barrier.wait();
                    if let Some(slot) = slot {
                        got.fetch_add(1, Ordering::SeqCst);
                        slot.fill(format!("m{i}"), i);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(got.load(Ordering::SeqCst), 5);
        let t = table.lock().unwrap();
        assert_eq!(t.len(), 6);
        assert_eq!(t.reserved(), 0);
    }

    #[test]
    fn concurrent_fill_release_and_removal_keep_the_bound() {
        const MAX: usize = 7;
        let table = Arc::new(Mutex::new(Table::<usize>::default()));
        let filled = Arc::new(AtomicUsize::new(0));
        let removed = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for t in 0..8usize {
            let (table, filled, removed) = (table.clone(), filled.clone(), removed.clone());
            threads.push(std::thread::spawn(move || {
                for i in 0..2000usize {
                    let n = t * 10_000 + i;
                    if let Some(slot) = try_reserve(&table, MAX) {
                        assert!(lock(&table).occupied() <= MAX);
                        std::thread::yield_now();
                        match n % 3 {
                            // A refused or failed commit gives its place back.
                            0 => drop(slot),
                            _ => {
                                slot.fill(format!("m{n}"), n);
                                filled.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                    assert!(lock(&table).occupied() <= MAX);
                    // Deliveries finish and make room.
                    if n % 2 == 0 {
                        let mut g = lock(&table);
                        if let Some(k) = g.keys().next().cloned() {
                            g.remove(&k);
                            removed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        let g = lock(&table);
        assert_eq!(g.reserved(), 0);
        assert!(g.len() <= MAX);
        assert_eq!(filled.load(Ordering::SeqCst) - removed.load(Ordering::SeqCst), g.len());
        assert!(filled.load(Ordering::SeqCst) > MAX, "the table was refilled many times");
    }

    #[test]
    fn full_until_a_place_is_given_back() {
        let table = Mutex::new(Table::<()>::default());
        let a = try_reserve(&table, 2).unwrap();
        let b = try_reserve(&table, 2).unwrap();
        assert!(try_reserve(&table, 2).is_none());
        drop(a);
        let c = try_reserve(&table, 2).unwrap();
        b.fill("b".into(), ());
        c.fill("c".into(), ());
        assert!(try_reserve(&table, 2).is_none());
        lock(&table).remove("b");
        assert!(try_reserve(&table, 2).is_some());
        assert_eq!(lock(&table).occupied(), 1);
    }
}
