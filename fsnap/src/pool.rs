//! The crate's worker pool: run one function over a slice on up to as many threads as there
//! are cores, results in order. Planning, saving, verifying and restoring sections all use it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::Result;

/// Run `f` over `items` on up to as many threads as there are cores; results in order, the
/// first error (in item order) wins.
pub(crate) fn parallel<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(usize, &T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<R>>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() {
                    return;
                }
                let r = f(i, &items[i]);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

/// Threads to read or write files beside the one parsing or writing a stream.
pub(crate) fn helpers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn results_come_in_item_order_and_the_first_error_wins() {
        let items: Vec<u32> = (0..100).collect();
        let out = parallel(&items, |i, x| Ok((i, x * 2))).unwrap();
        assert_eq!(
            out,
            (0..100).map(|x| (x as usize, x * 2)).collect::<Vec<_>>()
        );
        let e = parallel(&items, |_, x| match x {
            7 | 50 => Err(Error::io(format!("item {x}"), std::io::Error::other("no"))),
            _ => Ok(()),
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("item 7"), "{e}");
        assert!(parallel(&[] as &[u32], |_, _| Ok(())).unwrap().is_empty());
    }
}
