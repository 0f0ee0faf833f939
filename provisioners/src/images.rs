//! Image hygiene: every pull runs under a deadline, concurrent needs for
//! one image share a single pull, and the images the agent pulled are
//! recorded so that garbage collection removes only those (never an image
//! the operator pulled by hand), once no container has used them for a
//! grace period. Garbage collection goes through the [`Docker`] seam like
//! every other caller.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::docker::{Docker, DockerError};

/// One image the agent pulled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pulled {
    pub pulled_at: DateTime<Utc>,
    /// Since when no container uses it (`None` while one does).
    #[serde(default)]
    pub unused_since: Option<DateTime<Utc>>,
}

type Inflight = Arc<OnceCell<Result<(), DockerError>>>;

/// Pull deadline, shared pulls, and the record of pulled images.
#[derive(Debug)]
pub struct ImagePolicy {
    timeout: Duration,
    /// `<root>/images.json`; `None` keeps no record (nothing is collected).
    record: Option<PathBuf>,
    pulled: Mutex<BTreeMap<String, Pulled>>,
    inflight: Mutex<HashMap<String, Inflight>>,
}

impl Default for ImagePolicy {
    fn default() -> Self {
        ImagePolicy {
            timeout: Duration::from_secs(600),
            record: None,
            pulled: Mutex::default(),
            inflight: Mutex::default(),
        }
    }
}

impl ImagePolicy {
    /// Pulls time out after `timeout`; what was pulled is recorded in
    /// `record` (loaded now if it exists).
    pub fn new(timeout: Duration, record: PathBuf) -> Self {
        let pulled = std::fs::read(&record)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        ImagePolicy {
            timeout,
            record: Some(record),
            pulled: Mutex::new(pulled),
            inflight: Mutex::default(),
        }
    }

    /// Run `pull` for `image` under the deadline; a caller that needs the
    /// same image meanwhile waits for that pull instead of starting its own.
    pub async fn pull<F, Fut>(&self, image: &str, pull: F) -> Result<(), DockerError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), DockerError>>,
    {
        let cell = {
            let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(image.to_string()).or_default().clone()
        };
        let timeout = self.timeout;
        let result = cell
            .get_or_init(|| async move {
                match tokio::time::timeout(timeout, pull()).await {
                    Ok(r) => r,
                    Err(_) => Err(DockerError::PullTimeout {
                        image: image.to_string(),
                        timeout,
                    }),
                }
            })
            .await
            .clone();
        {
            let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if m.get(image).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                m.remove(image);
            }
        }
        if result.is_ok() {
            self.remember(image);
        }
        result
    }

    fn remember(&self, image: &str) {
        let mut p = self.pulled.lock().unwrap_or_else(|p| p.into_inner());
        p.entry(image.to_string()).or_insert(Pulled {
            pulled_at: Utc::now(),
            unused_since: None,
        });
        self.save(&p);
    }

    fn save(&self, p: &BTreeMap<String, Pulled>) {
        let Some(path) = &self.record else { return };
        let tmp = path.with_extension("json.tmp");
        let ok = serde_json::to_vec_pretty(p)
            .ok()
            .and_then(|b| std::fs::write(&tmp, b).ok())
            .and_then(|_| std::fs::rename(&tmp, path).ok());
        if ok.is_none() {
            tracing::warn!(path = %path.display(), "cannot save the record of pulled images");
        }
    }

    /// The images the agent pulled.
    pub fn pulled(&self) -> BTreeMap<String, Pulled> {
        self.pulled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Given the images containers use now, the pulled images unused for
    /// longer than `grace` (to remove), updating when each became unused.
    /// An image in use is never returned.
    pub fn collectable(
        &self,
        in_use: &HashSet<String>,
        grace: Duration,
        now: DateTime<Utc>,
    ) -> Vec<String> {
        let mut p = self.pulled.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (image, rec) in p.iter_mut() {
            if in_use.contains(image) {
                rec.unused_since = None;
                continue;
            }
            let since = *rec.unused_since.get_or_insert(now);
            if (now - since).to_std().unwrap_or_default() >= grace {
                out.push(image.clone());
            }
        }
        self.save(&p);
        out
    }

    /// Forget `image` (removed).
    pub fn forget(&self, image: &str) {
        let mut p = self.pulled.lock().unwrap_or_else(|p| p.into_inner());
        p.remove(image);
        self.save(&p);
    }
}

/// One garbage-collection pass over `docker`: remove the images `policy`
/// recorded as pulled that no container used for `grace`. Returns the
/// images removed.
pub async fn collect(
    docker: &dyn Docker,
    policy: &ImagePolicy,
    grace: Duration,
) -> Result<Vec<String>, DockerError> {
    let in_use = docker.images_in_use().await?;
    let mut removed = Vec::new();
    for image in policy.collectable(&in_use, grace, Utc::now()) {
        match docker.remove_image(&image).await {
            Ok(()) => {
                tracing::info!(image = %image, grace_s = grace.as_secs(), "removed an image no workload used for the grace period");
                policy.forget(&image);
                removed.push(image);
            }
            Err(e) => tracing::warn!(image = %image, error = %e, "cannot remove an unused image"),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn concurrent_needs_share_one_pull() {
        let p = ImagePolicy::default();
        let calls = AtomicU32::new(0);
        let pull = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(())
        };
        let (a, b, c) = tokio::join!(
            p.pull("img", pull),
            p.pull("img", pull),
            p.pull("img", pull)
        );
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A later need pulls again (the image may have been removed).
        p.pull("img", pull).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_pull_past_its_deadline_fails_with_the_image_named() {
        let p = ImagePolicy {
            timeout: Duration::from_millis(50),
            ..Default::default()
        };
        let e = p
            .pull("slow/image:1", || async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("slow/image:1") && e.contains("--pull-timeout"),
            "{e}"
        );
        assert!(p.pulled().is_empty(), "a failed pull is not recorded");
    }

    #[tokio::test]
    async fn only_pulled_images_unused_past_the_grace_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let p = ImagePolicy::new(Duration::from_secs(60), dir.path().join("images.json"));
        p.pull("ours:1", || async { Ok(()) }).await.unwrap();
        p.pull("ours:2", || async { Ok(()) }).await.unwrap();
        let t0 = Utc::now();
        let in_use: HashSet<String> = ["ours:2".to_string(), "operators:1".to_string()].into();
        let grace = Duration::from_secs(3600);
        assert!(
            p.collectable(&in_use, grace, t0).is_empty(),
            "grace starts now"
        );
        let later = t0 + chrono::Duration::hours(2);
        assert_eq!(p.collectable(&in_use, grace, later), ["ours:1"]);
        // The record survives a restart.
        let again = ImagePolicy::new(Duration::from_secs(60), dir.path().join("images.json"));
        assert_eq!(again.pulled().len(), 2);
        assert!(
            !again.pulled().contains_key("operators:1"),
            "hand-pulled images are never ours"
        );
    }

    #[tokio::test]
    async fn collection_removes_through_the_seam_only_unused_pulled_images() {
        let fake = crate::docker::FakeDocker::new();
        fake.add_image("ours:1");
        fake.add_image("foreign");
        fake.add_image("operators:1");
        // A container runs the image `foreign` (the fake's hand-made one).
        fake.add_foreign_container("someone", Default::default());
        let p = ImagePolicy::default();
        for image in ["ours:1", "foreign"] {
            p.pull(image, || async { Ok(()) }).await.unwrap();
        }
        let removed = collect(&fake, &p, Duration::ZERO).await.unwrap();
        assert_eq!(removed, ["ours:1"]);
        assert_eq!(fake.count("remove_image"), 1);
        assert_eq!(p.pulled().keys().collect::<Vec<_>>(), ["foreign"]);
    }
}
