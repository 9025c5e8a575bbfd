//! The live policy, swapped whole on reload.
//!
//! A handler calls [`PolicyHolder::current`] once when a connection (or SOCKS session) starts
//! and keeps that `Arc<Policy>` for the connection's life: a reload changes what new
//! connections see at once and never changes the rules under an established one.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Policy;

#[derive(Debug)]
pub struct PolicyHolder {
    current: ArcSwap<Policy>,
}

impl PolicyHolder {
    pub fn new(policy: Policy) -> Self {
        PolicyHolder {
            current: ArcSwap::from_pointee(policy),
        }
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    /// Installs a new, already compiled policy; returns the one it replaced.
    pub fn replace(&self, policy: Policy) -> Arc<Policy> {
        self.current.swap(Arc::new(policy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;

    fn policy(toml: &str) -> Policy {
        let cfg = PolicyConfig::from_toml(toml, &["http"]).expect("config");
        Policy::compile_with_users(&cfg, vec![], None).expect("policy")
    }

    #[test]
    fn a_policy_taken_before_a_swap_stays_in_force_for_its_holder() {
        let holder = PolicyHolder::new(policy("[policy]\ndefault = \"allow\"\n"));
        let before = holder.current();
        let old = holder.replace(policy(
            "[policy]\ndefault = \"deny\"\n[[policy.rules]]\nname = \"x\"\naction = \"deny\"\n",
        ));
        assert!(Arc::ptr_eq(&before, &old));
        assert_eq!(
            before.rule_count(),
            0,
            "the connection's policy did not change"
        );
        assert_eq!(
            holder.current().rule_count(),
            1,
            "new connections see the new policy"
        );
        assert_eq!(Arc::strong_count(&before), 2);
    }
}
