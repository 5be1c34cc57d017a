//! What the agent checks on the host before starting a zone: the paths
//! the zone needs exist. A zone that fails here cannot start until the
//! operator acts, so the start fails for good with the reason instead of
//! restarting in a loop.

use crate::config::Zone;

/// Why `zone` cannot start, if the host lacks something it needs.
pub fn check(zone: &Zone) -> Result<(), String> {
    if zone.template.is_none() && !zone.root.is_dir() {
        return Err(format!(
            "root {} does not exist or is not a directory; create it or set `template`",
            zone.root.display()
        ));
    }
    if let Some(t) = &zone.template
        && !t.is_dir()
    {
        return Err(format!(
            "template {} does not exist or is not a directory",
            t.display()
        ));
    }
    for m in &zone.mounts {
        if !m.source.exists() {
            return Err(format!(
                "bind source {} does not exist; create it or remove the mount",
                m.source.display()
            ));
        }
        if m.target.starts_with("/proc") || m.target.starts_with("/sys") {
            return Err(format!(
                "bind target {} is under /proc or /sys, which zonit sets up itself; choose another target",
                m.target.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_root_without_template_is_named() {
        let z = Zone::example("/nonexistent/zonit-root");
        let err = check(&z).unwrap_err();
        assert!(err.contains("/nonexistent/zonit-root"), "{err}");
    }

    #[test]
    fn an_existing_root_passes() {
        assert_eq!(check(&Zone::example("/")), Ok(()));
    }
}
