//! `sesame device`: a simulated phone. `enroll` creates a key and registers
//! it from an enrollment URI; `run` waits for pushes (or polls), shows each
//! challenge and answers it, interactively or as told by flags.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sesame_core::crypto::KeyAlgorithm;
use sesame_core::model::{Decision, Platform};
use sesame_device_sim::{Answer, DeviceIdentity, SimDevice};
use sesame_proto::device::v1 as pb;
use sesame_proto::types::v1 as types;

pub async fn enroll(
    uri: &str,
    key_file: &Path,
    alg: KeyAlgorithm,
    platform: Platform,
    name: &str,
) -> anyhow::Result<()> {
    let (url, token) = sesame_device_sim::parse_enrollment_uri(uri)?;
    let channel = sesame_device_sim::connect(&url).await?;
    let push_token = super::simulated_push_token();
    let device = SimDevice::enroll(channel, &url, &token, alg, platform, &push_token, name).await?;
    device.identity.save(key_file)?;
    println!(
        "enrolled device {} for user {:?} of tenant {}; key saved in {}",
        device.device_id(),
        device.identity.user_id,
        device.identity.tenant_id,
        key_file.display()
    );
    Ok(())
}

pub struct RunOptions {
    /// Answer without asking; `None` asks on the terminal.
    pub decision: Option<Decision>,
    pub number: Option<String>,
    /// Stop after answering one challenge.
    pub once: bool,
    /// Poll every this often instead of waiting for pushes.
    pub poll: Option<Duration>,
}

fn describe(d: &pb::ChallengeDetails) -> String {
    let Some(ctx) = &d.context else {
        return d.challenge_id.clone();
    };
    let mut s = format!("{} asks you to sign in", ctx.client_name);
    if let Some(t) = &ctx.transaction {
        s = format!(
            "{} asks you to approve paying {} {} to {}",
            ctx.client_name, t.amount, t.currency, t.payee
        );
    }
    if !ctx.ip_address.is_empty() || !ctx.location.is_empty() {
        s.push_str(&format!(" (from {} {})", ctx.ip_address, ctx.location));
    }
    if !ctx.binding_message.is_empty() {
        s.push_str(&format!(": {}", ctx.binding_message));
    }
    s
}

fn ask(prompt: &str) -> anyhow::Result<String> {
    print!("{prompt}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

fn choose_answer(d: &pb::ChallengeDetails, opts: &RunOptions) -> anyhow::Result<Answer> {
    let mode = types::NumberMatchMode::try_from(d.number_match).unwrap_or_default();
    let decision = match opts.decision {
        Some(x) => x,
        None if std::io::stdin().is_terminal() => {
            match ask("approve, deny, or report fraud (\"this wasn't me\")? [a/d/f] ")?.as_str() {
                "a" | "approve" | "y" | "yes" => Decision::Approve,
                "f" | "fraud" => Decision::DenyFraud,
                _ => Decision::Deny,
            }
        }
        None => anyhow::bail!("no terminal to ask on: pass --answer approve|deny|fraud"),
    };
    let number = if decision != Decision::Approve || mode == types::NumberMatchMode::None {
        String::new()
    } else if let Some(n) = &opts.number {
        n.clone()
    } else if std::io::stdin().is_terminal() {
        if mode == types::NumberMatchMode::Choose {
            ask(&format!(
                "which number does the sign-in page show? {:?} ",
                d.number_choices
            ))?
        } else {
            ask("type the number shown on the sign-in page: ")?
        }
    } else {
        anyhow::bail!("this challenge needs the number from the sign-in page: pass --number")
    };
    Ok(Answer { decision, number })
}

pub async fn run(key_file: &Path, opts: RunOptions) -> anyhow::Result<()> {
    let identity = DeviceIdentity::load(key_file)?;
    let channel = sesame_device_sim::connect(&identity.server_url).await?;
    let device = SimDevice::from_identity(identity, channel)?;
    println!("device {} waiting for challenges", device.device_id());
    let mut inbox = if opts.poll.is_none() {
        device.push_inbox().await.ok()
    } else {
        None
    };
    loop {
        // Whatever is pending first (pushes get lost), then wait.
        let mut pending = device.pending().await?;
        if pending.is_empty() {
            match inbox.as_mut() {
                Some(s) => match s.message().await.context("push inbox")? {
                    Some(p) => {
                        println!("push: {} — {}", p.alert_title, p.alert_body);
                        pending.push(device.details(&p.challenge_id).await?);
                    }
                    None => anyhow::bail!("push inbox closed by the server"),
                },
                None => {
                    tokio::time::sleep(opts.poll.unwrap_or(Duration::from_secs(2))).await;
                    continue;
                }
            }
        }
        for d in pending {
            if d.status != types::ChallengeStatus::Pending as i32 {
                continue;
            }
            println!("{}", describe(&d));
            let answer = choose_answer(&d, &opts)?;
            match device.respond(&d, &answer).await {
                Ok(r) => println!(
                    "answer accepted: {:?}",
                    types::ChallengeStatus::try_from(r.status).unwrap_or_default()
                ),
                Err(e) => println!("answer refused: {e}"),
            }
            if opts.once {
                return Ok(());
            }
        }
    }
}
