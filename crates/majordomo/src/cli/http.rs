//! `majordomo http url|rotate-token`: the dashboard link with its login token.

use clap::Subcommand;
use majordomo_client::{Client, ClientError, ConnectOptions};
use majordomo_core::exit;
use majordomo_proto::http::{HttpInfoCmd, HttpRotateToken};
use majordomo_proto::{ErrorBody, ErrorCode, NoArgs};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum HttpCmd {
    /// Print the dashboard link with the login token (`http://127.0.0.1:7373/?token=...`).
    Url,
    /// Replace the login token with a new one (old links and browser sessions stop working)
    /// and print the new link.
    RotateToken,
}

pub async fn run(cmd: &HttpCmd, opts: &ConnectOptions, json: bool) -> Result<u8, ClientError> {
    let mut client = Client::connect(opts).await?;
    if let HttpCmd::RotateToken = cmd {
        client.call_cmd::<HttpRotateToken>(&NoArgs {}).await?;
    }
    let info = client.call_cmd::<HttpInfoCmd>(&NoArgs {}).await?;
    let token = std::fs::read_to_string(&info.token_file).map_err(|e| {
        ClientError::Remote(ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "cannot read the login token {}: {e}; run this as the daemon's user",
                info.token_file
            ),
        ))
    })?;
    let Some(addr) = info.listen.first() else {
        eprintln!("majordomo: the HTTP server listens nowhere");
        return Ok(exit::UNAVAILABLE);
    };
    let links: Vec<String> = info
        .listen
        .iter()
        .map(|a| majordomo_http::link(a, info.tls, token.trim()))
        .collect();
    if json {
        println!(
            "{}",
            json!({"url": majordomo_http::link(addr, info.tls, token.trim()), "urls": links})
        );
    } else {
        for l in links {
            println!("{l}");
        }
    }
    Ok(exit::OK)
}
