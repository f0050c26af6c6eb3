//! Running independent jobs on every core.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;

/// Runs `work` on each of `jobs`, spread over one thread per core, and returns the results
/// in the order of `jobs`. The first error wins and stops the rest.
pub fn map_on_every_core<T: Sync, R: Send>(
    jobs: &[T],
    work: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(jobs.len());
    if threads <= 1 {
        return jobs.iter().map(work).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(jobs.iter().map(|_| None).collect());
    let failed = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while failed.lock().map(|f| f.is_none()).unwrap_or(false) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    match work(job) {
                        Ok(result) => results.lock().unwrap()[i] = Some(result),
                        Err(err) => {
                            failed.lock().unwrap().get_or_insert(err);
                        }
                    }
                }
            });
        }
    });
    if let Some(err) = failed.into_inner().unwrap() {
        return Err(err);
    }
    Ok(results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_order_of_the_jobs_and_the_first_error_wins() {
        let jobs: Vec<u32> = (0..100).collect();
        assert_eq!(
            map_on_every_core(&jobs, |n| Ok(n * 2)).unwrap(),
            (0..100).map(|n| n * 2).collect::<Vec<_>>()
        );
        let failed = map_on_every_core(&jobs, |n| {
            anyhow::ensure!(*n != 50, "job {n} failed");
            Ok(*n)
        });
        assert_eq!(failed.unwrap_err().to_string(), "job 50 failed");
    }
}
