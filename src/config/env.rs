//! Environment variables: the one table of every variable dcr-proxy reads, and what each overrides.
//!
//! | Variable                           | Overrides / means                                                   |
//! |------------------------------------|---------------------------------------------------------------------|
//! | `AZURE_TENANT_ID`                  | `idp.tenant` (`kind = "azure"`)                                     |
//! | `AZURE_CLIENT_ID`                  | `idp.client_id` (`kind = "azure"`)                                  |
//! | `AZURE_CLIENT_SECRET`              | `idp.client_secret` (`kind = "azure"`)                              |
//! | `OIDC_CLIENT_SECRET`               | `idp.client_secret` (`kind = "oidc"`)                               |
//! | `DCR_PROXY_INITIAL_ACCESS_TOKEN`   | `registration.initial_access_token`                                 |
//! | `DCR_PROXY_INTROSPECTION_SECRET`   | `introspection.client_secret`                                       |
//! | `DCR_PROXY_SNAPSHOT_KEY`           | `store.snapshot_key_file` (the key itself, not a path)              |
//! | `DCR_PROXY_SNAPSHOT_KEY_PREVIOUS`  | none: the key before a rotation, snapshots are also read with it    |
//! | `DCR_PROXY_REDIS_URL`              | `store.redis_url`                                                   |
//! | `DCR_PROXY_CONFIG`                 | the `--config` flag (read by the command line, `main.rs`)           |
//! | `RUST_LOG`                         | `log.filter` (read by the log subscriber, `main.rs`)                |
//! | `DCR_PROXY_ADMIN_TOKEN`            | none: the admin API's token (`admin.listen`; also read by `admin`)  |
//!
//! A variable overrides its key whenever it is set, also when the file sets the key. The config reads the first
//! eight only through `Env::get`, which takes an entry of [`TABLE`], so no other name can be read; the lookup is a
//! function that tests feed without touching the process environment. The README's list is checked against the
//! table by a test.

/// One environment variable and the config key it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar {
    pub name: &'static str,
    /// The key it overrides, or what it means when it overrides none.
    pub overrides: &'static str,
}

pub const AZURE_TENANT_ID: EnvVar = EnvVar { name: "AZURE_TENANT_ID", overrides: "idp.tenant (azure)" };
pub const AZURE_CLIENT_ID: EnvVar = EnvVar { name: "AZURE_CLIENT_ID", overrides: "idp.client_id (azure)" };
pub const AZURE_CLIENT_SECRET: EnvVar = EnvVar { name: "AZURE_CLIENT_SECRET", overrides: "idp.client_secret (azure)" };
pub const OIDC_CLIENT_SECRET: EnvVar = EnvVar { name: "OIDC_CLIENT_SECRET", overrides: "idp.client_secret (oidc)" };
pub const INITIAL_ACCESS_TOKEN: EnvVar =
    EnvVar { name: "DCR_PROXY_INITIAL_ACCESS_TOKEN", overrides: "registration.initial_access_token" };
pub const INTROSPECTION_SECRET: EnvVar =
    EnvVar { name: "DCR_PROXY_INTROSPECTION_SECRET", overrides: "introspection.client_secret" };
pub const SNAPSHOT_KEY: EnvVar =
    EnvVar { name: "DCR_PROXY_SNAPSHOT_KEY", overrides: "store.snapshot_key_file (the key itself)" };
pub const SNAPSHOT_KEY_PREVIOUS: EnvVar =
    EnvVar { name: "DCR_PROXY_SNAPSHOT_KEY_PREVIOUS", overrides: "none: the key before a rotation, read with" };
pub const ADMIN_TOKEN: EnvVar =
    EnvVar { name: "DCR_PROXY_ADMIN_TOKEN", overrides: "none: the admin API token (required with admin.listen)" };
pub const REDIS_URL: EnvVar = EnvVar { name: "DCR_PROXY_REDIS_URL", overrides: "store.redis_url" };
/// Read by the command line parser (`clap`), not by the config.
pub const CONFIG_PATH: EnvVar = EnvVar { name: "DCR_PROXY_CONFIG", overrides: "the --config flag" };
/// Read by the log subscriber, not by the config.
pub const LOG_FILTER: EnvVar = EnvVar { name: "RUST_LOG", overrides: "log.filter" };

/// Every variable dcr-proxy reads.
pub const TABLE: [EnvVar; 12] = [
    AZURE_TENANT_ID,
    AZURE_CLIENT_ID,
    AZURE_CLIENT_SECRET,
    OIDC_CLIENT_SECRET,
    INITIAL_ACCESS_TOKEN,
    INTROSPECTION_SECRET,
    SNAPSHOT_KEY,
    SNAPSHOT_KEY_PREVIOUS,
    CONFIG_PATH,
    LOG_FILTER,
    ADMIN_TOKEN,
    REDIS_URL,
];

/// The environment as the config sees it: a lookup by name (the process environment, or a test's map).
pub(crate) struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl<'a> Env<'a> {
    pub(crate) fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self(lookup)
    }

    /// The value of a variable of the table, when set.
    pub(crate) fn get(&self, var: EnvVar) -> Option<String> {
        (self.0)(var.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, a) in TABLE.iter().enumerate() {
            assert!(TABLE[i + 1..].iter().all(|b| b.name != a.name), "{} twice", a.name);
        }
    }

    #[test]
    fn the_readme_and_the_module_doc_list_every_variable_and_no_other() {
        let readme = include_str!("../../README.md");
        let (_, list) = readme.split_once("Environment: `").unwrap_or_default();
        let (list, _) = list.split_once('.').unwrap_or_default();
        let listed: Vec<&str> = list
            .split('`')
            .filter(|s| s.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !s.is_empty())
            .collect();
        let mut expected: Vec<&str> = TABLE.iter().map(|v| v.name).collect();
        let mut listed_sorted = listed.clone();
        expected.sort_unstable();
        listed_sorted.sort_unstable();
        assert_eq!(listed_sorted, expected, "README's `Environment:` list");
        let doc = include_str!("env.rs");
        for var in TABLE {
            assert!(doc.contains(&format!("//! | `{}`", var.name)), "{} is missing from the module doc", var.name);
        }
    }

    #[test]
    fn only_table_entries_are_looked_up() {
        let seen = std::cell::RefCell::new(Vec::new());
        let lookup = |name: &str| {
            seen.borrow_mut().push(name.to_owned());
            (name == "AZURE_TENANT_ID").then(|| "t".to_owned())
        };
        let env = Env::new(&lookup);
        assert_eq!(env.get(AZURE_TENANT_ID).as_deref(), Some("t"));
        assert_eq!(env.get(OIDC_CLIENT_SECRET), None);
        assert_eq!(*seen.borrow(), ["AZURE_TENANT_ID", "OIDC_CLIENT_SECRET"]);
    }
}
