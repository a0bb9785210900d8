//! A short-lived cache of whole responses for the requests every page makes on opening (the newest
//! candles, the symbol list): concurrent identical requests share one query, and its answer serves every
//! request for `ttl` after it. Bounded: at most `max` keys; beyond that, requests query without caching.
//! Failures are not cached (the next request queries again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::OnceCell;
use tokio::time::Instant;

struct Entry {
    born: Instant,
    value: Arc<OnceCell<Bytes>>,
}

/// Responses by request key, each kept `ttl`.
pub struct Cache {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<String, Entry>>,
}

/// Whether the answer came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Queried for this request.
    Queried,
    /// Another request's answer (finished or in flight).
    Shared,
}

impl Cache {
    /// A cache of at most `max` keys, each answer kept `ttl`.
    pub fn new(ttl: Duration, max: usize) -> Cache {
        Cache { ttl, max, entries: Mutex::new(HashMap::new()) }
    }

    /// The answer for `key`: a live one, the one in flight, or `fill()`'s.
    pub async fn get_or_fill<E>(
        &self,
        key: String,
        fill: impl AsyncFnOnce() -> Result<Bytes, E>,
    ) -> Result<(Bytes, Served), E> {
        let cell = {
            let mut entries = self.entries.lock().expect("cache lock");
            let now = Instant::now();
            entries.retain(|_, e| now.duration_since(e.born) < self.ttl);
            match entries.get(&key) {
                Some(e) => Some(e.value.clone()),
                None if entries.len() >= self.max => None,
                None => {
                    let value = Arc::new(OnceCell::new());
                    entries.insert(key, Entry { born: now, value: value.clone() });
                    Some(value)
                }
            }
        };
        let Some(cell) = cell else { return fill().await.map(|b| (b, Served::Queried)) };
        let mut queried = false;
        let bytes = cell
            .get_or_try_init(async || {
                queried = true;
                fill().await
            })
            .await?
            .clone();
        Ok((bytes, if queried { Served::Queried } else { Served::Shared }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn concurrent_identical_requests_share_one_fill_and_failures_are_not_kept() {
        let cache = Arc::new(Cache::new(Duration::from_secs(60), 8));
        let fills = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, fills) = (cache.clone(), fills.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_fill::<()>("k".into(), async || {
                            fills.fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            Ok(Bytes::from_static(b"v"))
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().0, "v");
        }
        assert_eq!(fills.load(Ordering::SeqCst), 1);

        let r = cache.get_or_fill("e".into(), async || Err::<Bytes, _>("down")).await;
        assert_eq!(r, Err("down"));
        let (v, served) = cache.get_or_fill::<()>("e".into(), async || Ok(Bytes::from_static(b"up"))).await.unwrap();
        assert_eq!((v.as_ref(), served), (&b"up"[..], Served::Queried));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_expire_and_keys_beyond_the_bound_are_not_kept() {
        let cache = Cache::new(Duration::from_millis(30), 1);
        let fill = |v: &'static [u8]| async move || Ok::<_, ()>(Bytes::from_static(v));
        assert_eq!(cache.get_or_fill("a".into(), fill(b"1")).await.unwrap().1, Served::Queried);
        assert_eq!(
            cache.get_or_fill("a".into(), fill(b"2")).await.unwrap(),
            (Bytes::from_static(b"1"), Served::Shared)
        );
        // The bound is reached: "b" is answered but not kept.
        assert_eq!(cache.get_or_fill("b".into(), fill(b"3")).await.unwrap().1, Served::Queried);
        assert_eq!(
            cache.get_or_fill("b".into(), fill(b"4")).await.unwrap(),
            (Bytes::from_static(b"4"), Served::Queried)
        );
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(
            cache.get_or_fill("a".into(), fill(b"5")).await.unwrap(),
            (Bytes::from_static(b"5"), Served::Queried)
        );
    }
}
