//! Objects by id with reservations: the pod's containers and a container's exec processes.
//!
//! An id is reserved before anything is built for it, so two requests with one id cannot both
//! build (the second is AlreadyExists at once). A reservation dropped unfilled frees the id; a
//! reserved id is not yet visible (NotFound).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};

/// Id -> object; `None`: reserved, being built.
type Entries<T> = Arc<Mutex<HashMap<String, Option<Arc<T>>>>>;

/// Objects of one kind by id.
pub struct Registry<T> {
    /// What the ids name in messages ("container", "exec process").
    kind: &'static str,
    entries: Entries<T>,
}

impl<T> Registry<T> {
    pub fn new(kind: &'static str) -> Registry<T> {
        Registry {
            kind,
            entries: Arc::default(),
        }
    }

    /// Claim `id` for an object about to be built.
    pub fn reserve(&self, id: &str) -> Result<Reservation<T>> {
        let mut entries = lock(&self.entries);
        if entries.contains_key(id) {
            return Err(Error::AlreadyExists(format!(
                "{} {id} already exists",
                self.kind
            )));
        }
        entries.insert(id.to_string(), None);
        Ok(Reservation {
            id: id.to_string(),
            entries: Some(self.entries.clone()),
        })
    }

    pub fn get(&self, id: &str) -> Result<Arc<T>> {
        lock(&self.entries)
            .get(id)
            .cloned()
            .flatten()
            .ok_or_else(|| Error::NotFound(format!("{} {id} not found", self.kind)))
    }

    pub fn remove(&self, id: &str) {
        lock(&self.entries).remove(id);
    }

    /// Every built object (reserved ids are left out), in no particular order.
    pub fn all(&self) -> Vec<Arc<T>> {
        lock(&self.entries).values().flatten().cloned().collect()
    }

    /// No object and no reservation.
    pub fn is_empty(&self) -> bool {
        lock(&self.entries).is_empty()
    }
}

/// An id claimed in a [`Registry`]; freed when dropped unless filled.
pub struct Reservation<T> {
    id: String,
    entries: Option<Entries<T>>,
}

impl<T> Reservation<T> {
    /// Register the built object under the reserved id.
    pub fn fill(mut self, object: Arc<T>) {
        if let Some(entries) = self.entries.take() {
            lock(&entries).insert(self.id.clone(), Some(object));
        }
    }
}

impl<T> Drop for Reservation<T> {
    fn drop(&mut self) {
        if let Some(entries) = self.entries.take() {
            lock(&entries).remove(&self.id);
        }
    }
}

fn lock<M>(m: &Mutex<M>) -> MutexGuard<'_, M> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_id_is_taken_until_the_reservation_is_dropped() {
        let r: Registry<u32> = Registry::new("container");
        let first = r.reserve("c1").unwrap();
        let second = r.reserve("c1").err().expect("second reservation of c1");
        assert!(
            matches!(second, Error::AlreadyExists(ref m) if m == "container c1 already exists")
        );
        assert!(
            matches!(r.get("c1"), Err(Error::NotFound(_))),
            "visible while reserved"
        );
        drop(first);
        assert!(r.is_empty());
        r.reserve("c1").unwrap().fill(Arc::new(7));
        assert_eq!(*r.get("c1").unwrap(), 7);
        assert!(matches!(r.reserve("c1"), Err(Error::AlreadyExists(_))));
        r.remove("c1");
        assert!(
            matches!(r.get("c1"), Err(Error::NotFound(ref m)) if m == "container c1 not found")
        );
    }

    #[test]
    fn concurrent_reservations_of_one_id_let_exactly_one_through() {
        let r: Arc<Registry<u32>> = Arc::new(Registry::new("container"));
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (r, barrier) = (r.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    r.reserve("c1")
                        .ok()
                        .map(|res| res.fill(Arc::new(i)))
                        .is_some()
                })
            })
            .collect();
        let won = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|won| *won)
            .count();
        assert_eq!(won, 1);
    }
}
