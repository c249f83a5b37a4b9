//! Both simulators at once, with credentials written to a directory in the
//! files an operator would get from Apple and Google, and the `push_apps`
//! configuration that points Sesame at them: what `sesame simulate-push`,
//! the end-to-end tests and the benchmarks start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sesame_push::SimulatorProvider;

use crate::apns::ApnsSimulator;
use crate::credentials::{ApnsKeyMaterial, FcmAccountMaterial};
use crate::fcm::FcmSimulator;
use crate::tls::SimTls;
use crate::{Running, SimControl};

pub const KEY_ID: &str = "SIMKEY0001";
pub const TEAM_ID: &str = "SIMTEAM001";

pub struct Bundle {
    pub apns: Running,
    pub fcm: Running,
    pub apns_sim: Arc<ApnsSimulator>,
    pub fcm_sim: Arc<FcmSimulator>,
    pub control: Arc<SimControl>,
    pub dir: PathBuf,
    /// TOML for Sesame: `push_provider = "apns_fcm"` and two apps of `tenant`
    /// (`<tenant>-ios`, `<tenant>-android`).
    pub config_toml: String,
}

impl Bundle {
    pub async fn start(
        dir: &Path,
        tenant: &str,
        apns_listen: &str,
        fcm_listen: &str,
    ) -> Result<Bundle, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Absolute paths in the written config: `serve` may run elsewhere.
        let dir = &std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let write = |name: &str, text: &str| -> Result<String, String> {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok(p.display().to_string())
        };
        let tls = SimTls::generate()?;
        let control = SimControl::new(Arc::new(SimulatorProvider::new()));
        let (apns, apns_sim) = ApnsSimulator::start(apns_listen, &tls, control.clone()).await?;
        let (fcm, fcm_sim) = FcmSimulator::start(fcm_listen, &tls, control.clone()).await?;
        let topic = format!("com.example.{}", tenant.replace('-', ""));
        let key = ApnsKeyMaterial::generate(KEY_ID, TEAM_ID);
        apns_sim.register_key(&key, &[&topic]);
        let account =
            FcmAccountMaterial::generate(&format!("{tenant}-push"), &fcm_sim.token_uri())?;
        fcm_sim.register_account(&account);
        let ca = write("ca.pem", &tls.ca_pem)?;
        let p8 = write(&format!("AuthKey_{KEY_ID}.p8"), &key.p8_pem)?;
        let sa = write("fcm-service-account.json", &account.json)?;
        let config_toml = format!(
            r#"push_provider = "apns_fcm"

[push_apps.{tenant}-ios]
tenant = "{tenant}"
platform = "ios"
[push_apps.{tenant}-ios.apns]
base_url = "{apns_url}"
topic = "{topic}"
key_file = "{p8}"
key_id = "{KEY_ID}"
team_id = "{TEAM_ID}"
ca_file = "{ca}"

[push_apps.{tenant}-android]
tenant = "{tenant}"
platform = "android"
[push_apps.{tenant}-android.fcm]
base_url = "{fcm_url}"
service_account_file = "{sa}"
ca_file = "{ca}"
"#,
            apns_url = apns.url(),
            fcm_url = fcm.url(),
        );
        write("push-apps.toml", &config_toml)?;
        Ok(Bundle {
            apns,
            fcm,
            apns_sim,
            fcm_sim,
            control,
            dir: dir.to_path_buf(),
            config_toml,
        })
    }
}
