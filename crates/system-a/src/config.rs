//! How a System A stand-in is set up.

use std::net::{Ipv4Addr, SocketAddr};

use serde::Deserialize;

/// Settings of a [`SystemA`](super::SystemA).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemAConfig {
    /// `127.0.0.1:0` (the default) picks a free port.
    pub listen: SocketAddr,
    /// The NATS server the CDC events go to, such as `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// The JetStream stream holding the events; created (capturing
    /// `<subject_prefix>.>`) when missing, used as it is when present.
    pub stream: String,
    /// Events go to `<subject_prefix>.<id>`.
    pub subject_prefix: String,
    /// The bearer token the API requires; `None` = no authentication. The
    /// admin routes never require one.
    pub token: Option<String>,
}

impl Default for SystemAConfig {
    fn default() -> Self {
        SystemAConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            stream: "CDC".to_owned(),
            subject_prefix: "cdc.contacts".to_owned(),
            token: None,
        }
    }
}

impl SystemAConfig {
    /// Why the settings cannot work, if they cannot.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let prefix = &self.subject_prefix;
        if prefix.is_empty()
            || prefix
                .split('.')
                .any(|token| token.is_empty() || token.contains(['*', '>', ' ']))
        {
            return Err(format!(
                "subject_prefix \"{prefix}\" must be dot-separated tokens without wildcards or spaces"
            ));
        }
        if self.stream.is_empty() || self.stream.contains(['.', '*', '>', ' ', '/', '\\']) {
            return Err(format!(
                "stream \"{}\" is not a valid stream name",
                self.stream
            ));
        }
        if self.token.as_deref() == Some("") {
            return Err("token is empty: leave it out for no authentication".to_owned());
        }
        Ok(())
    }

    /// What the stream captures.
    pub(crate) fn stream_subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_json_with_unknown_fields_refused() {
        let config: SystemAConfig =
            serde_json::from_str(r#"{"nats_url": "nats://127.0.0.1:1", "token": "t"}"#).unwrap();
        assert_eq!(config.stream, "CDC");
        assert_eq!(config.subject_prefix, "cdc.contacts");
        assert_eq!(config.stream_subjects(), "cdc.contacts.>");
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.token.as_deref(), Some("t"));
        assert!(serde_json::from_str::<SystemAConfig>(r#"{"nats": "x"}"#).is_err());
    }

    #[test]
    fn validate_refuses_prefixes_and_names_nats_would_not_take() {
        assert_eq!(SystemAConfig::default().validate(), Ok(()));
        for prefix in ["", "cdc.", ".cdc", "cdc.*", "cdc.>", "a b", "a..b"] {
            let config = SystemAConfig {
                subject_prefix: prefix.into(),
                ..SystemAConfig::default()
            };
            assert!(config.validate().is_err(), "{prefix:?}");
        }
        for stream in ["", "a.b", "a*", "a b"] {
            let config = SystemAConfig {
                stream: stream.into(),
                ..SystemAConfig::default()
            };
            assert!(config.validate().is_err(), "{stream:?}");
        }
        let empty_token = SystemAConfig {
            token: Some(String::new()),
            ..SystemAConfig::default()
        };
        assert!(empty_token.validate().is_err());
    }
}
