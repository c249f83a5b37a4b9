//! Which push apps exist and whose they are: enough for enrollment to tie a
//! device to one of its tenant's apps (the credentials stay with the
//! dispatcher, in `sesame-push`).

use std::collections::BTreeMap;

use crate::ids::TenantId;
use crate::model::Platform;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushAppCatalog {
    apps: BTreeMap<String, (TenantId, Platform)>,
}

impl PushAppCatalog {
    /// App ids follow the tenant id rules (`a-z`, `0-9`, `-`, 1–64).
    pub fn insert(&mut self, id: &str, tenant: TenantId, platform: Platform) -> Result<(), String> {
        TenantId::parse(id)
            .map_err(|_| format!("push app id {id:?}: 1 to 64 characters of a-z, 0-9 and -"))?;
        self.apps.insert(id.to_owned(), (tenant, platform));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// The app a new device of `tenant` on `platform` is tied to: the one it
    /// names, or the tenant's only app for the platform. With no apps at all
    /// (the built-in simulator) the answer is the empty id.
    pub fn resolve(
        &self,
        tenant: &TenantId,
        platform: Platform,
        requested: &str,
    ) -> Result<String, String> {
        if self.apps.is_empty() {
            if requested.is_empty() {
                return Ok(String::new());
            }
            return Err("this server has no push apps configured: leave push_app empty".into());
        }
        if !requested.is_empty() {
            return match self.apps.get(requested) {
                Some((t, p)) if t == tenant && *p == platform => Ok(requested.to_owned()),
                Some((t, _)) if t == tenant => {
                    Err(format!("push app {requested:?} is not for this platform"))
                }
                // Another tenant's app reads as unknown: ids are not disclosed.
                _ => Err(format!("push app {requested:?} is unknown for this tenant")),
            };
        }
        let mine: Vec<&String> = self
            .apps
            .iter()
            .filter(|(_, (t, p))| t == tenant && *p == platform)
            .map(|(id, _)| id)
            .collect();
        match mine.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(format!("tenant {tenant} has no push app for this platform: ask its operator to configure one")),
            many => Err(format!("tenant {tenant} has several apps for this platform: name one in push_app ({})",
                many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_tied_to_one_of_its_tenants_apps() {
        let bank = TenantId::parse("bank").unwrap();
        let shop = TenantId::parse("shop").unwrap();
        let mut c = PushAppCatalog::default();
        assert_eq!(c.resolve(&bank, Platform::Ios, "").unwrap(), "");
        assert!(c.resolve(&bank, Platform::Ios, "x").is_err());
        c.insert("bank-ios", bank.clone(), Platform::Ios).unwrap();
        c.insert("bank-android", bank.clone(), Platform::Android)
            .unwrap();
        c.insert("shop-ios", shop.clone(), Platform::Ios).unwrap();
        assert_eq!(c.resolve(&bank, Platform::Ios, "").unwrap(), "bank-ios");
        assert_eq!(
            c.resolve(&bank, Platform::Android, "").unwrap(),
            "bank-android"
        );
        assert!(c
            .resolve(&bank, Platform::Ios, "shop-ios")
            .unwrap_err()
            .contains("unknown"));
        assert!(c
            .resolve(&bank, Platform::Ios, "bank-android")
            .unwrap_err()
            .contains("platform"));
        assert!(c
            .resolve(&shop, Platform::Android, "")
            .unwrap_err()
            .contains("no push app"));
        c.insert("bank-ios-pro", bank.clone(), Platform::Ios)
            .unwrap();
        assert!(c
            .resolve(&bank, Platform::Ios, "")
            .unwrap_err()
            .contains("several"));
        assert_eq!(
            c.resolve(&bank, Platform::Ios, "bank-ios-pro").unwrap(),
            "bank-ios-pro"
        );
        assert!(c.insert("Bad App", bank, Platform::Ios).is_err());
    }
}
