//! The Rust client against a served node:
//!
//! ```sh
//! PREPAID_TOKENS=ops:admin:admin-token-0123456789 prepaid serve --ephemeral --simulated-gateway &
//! PREPAID_TOKEN=admin-token-0123456789 cargo run --example client -- 127.0.0.1:7070
//! ```
//!
//! Opens an account, buys credits, then authorizes usage from many tasks at
//! once: the client gathers concurrent calls into batches on one stream.

use prepaid::{Client, ClientError};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7070".into());
    let token = std::env::var("PREPAID_TOKEN").unwrap_or_default();
    let client = Client::connect(&addr, &token).await?;
    let account = format!("example_{}", std::process::id());

    client.open_account(&account).await?;
    let bought = client.purchase(&account, &format!("{account}-pack-1"), "25.00").await?;
    println!("bought credits: balance {}", bought.balance);

    // 1,000 API calls from 50 tasks, each a strict debit of $0.002.
    let mut tasks = Vec::new();
    for t in 0..50 {
        let (client, account) = (client.clone(), account.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..20 {
                // The idempotency key names the API call: a retry after an
                // unknown outcome sends the same key and is applied once.
                let key = format!("{account}-call-{t}-{n}");
                loop {
                    match client.debit(&account, &key, "0.002").await {
                        Ok(_) => break,
                        Err(ClientError::OutcomeUnknown(_)) => continue,
                        Err(refused) => {
                            eprintln!("refused: {refused}");
                            break;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let view = client.balance(&account).await?;
    println!("after 1,000 calls: balance {} (purchased {}, free {})", view.balance, view.purchased, view.free);
    match client.debit(&account, &format!("{account}-too-much"), "1000").await {
        Err(ClientError::Refused { code, message }) => println!("refused as expected: {code} ({message})"),
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
