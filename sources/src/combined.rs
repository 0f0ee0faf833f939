//! `CombinedSource`: runs each source in its own task and merges their work
//! into one stream; it ends when every source has ended.

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::{ReservationSource, Work};

pub struct CombinedSource {
    rx: mpsc::Receiver<Work>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl CombinedSource {
    pub fn new(sources: Vec<Box<dyn ReservationSource>>) -> Self {
        // Capacity 1: a source runs at most one unit of work ahead of the
        // engine, which keeps memory bounded.
        let (tx, rx) = mpsc::channel(1);
        let tasks = sources
            .into_iter()
            .map(|mut s| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(w) = s.next().await {
                        if tx.send(w).await.is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        CombinedSource { rx, tasks }
    }
}

impl Drop for CombinedSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[async_trait]
impl ReservationSource for CombinedSource {
    async fn next(&mut self) -> Option<Work> {
        self.rx.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(u32);

    #[async_trait]
    impl ReservationSource for Count {
        async fn next(&mut self) -> Option<Work> {
            if self.0 == 0 {
                return None;
            }
            self.0 -= 1;
            Some(Work::Due(vec![self.0.to_string()]))
        }
    }

    #[tokio::test]
    async fn merges_and_ends_when_all_end() {
        let mut c = CombinedSource::new(vec![Box::new(Count(3)), Box::new(Count(2))]);
        let mut n = 0;
        while let Some(Work::Due(_)) = c.next().await {
            n += 1;
        }
        assert_eq!(n, 5);
    }
}
