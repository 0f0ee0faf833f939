//! The node-local network id: `base58(md5(user_id ‖ name))[..13]`, so two
//! users' networks of the same name never meet on a node.

use md5::{Digest, Md5};

/// Node-local identity of the network `name` reserved by `user_id`.
pub fn network_local_id(user_id: &str, name: &str) -> String {
    let mut h = Md5::new();
    h.update(user_id.as_bytes());
    h.update(name.as_bytes());
    let mut id = bs58::encode(h.finalize()).into_string();
    id.truncate(13);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differs_per_user() {
        assert_ne!(network_local_id("a", "net"), network_local_id("b", "net"));
        assert_eq!(network_local_id("a", "net").len(), 13);
    }
}
