//! `meshctl`: reads a node agent's admin API.

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mesh_agent::admin::DEFAULT_ADMIN_ADDR;
use mesh_agent::report::StatusReport;

#[derive(Parser)]
#[command(name = "meshctl", version, about = "Inspect the mesh agent on this node")]
struct Cli {
    /// The agent's admin address.
    #[arg(long, global = true, default_value = DEFAULT_ADMIN_ADDR)]
    admin: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Version, uptime, programs, config source and reloads, services and backends.
    Status {
        /// Print the raw JSON report.
        #[arg(long)]
        json: bool,
    },
    /// The agent's config dump (JSON).
    ConfigDump,
    /// The compiled HTTP/TCP/TLS route table per host (JSON), and which
    /// service ports go through the proxy; at a gateway, per listener.
    Routes,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Status { json } => {
            let body = runtime.block_on(get(&cli.admin, "/status"))?;
            if json {
                println!("{body}");
            } else {
                let report: StatusReport = serde_json::from_str(&body).context("decoding the status report")?;
                print!("{}", report.render());
            }
        }
        Command::ConfigDump => println!("{}", runtime.block_on(get(&cli.admin, "/config_dump"))?),
        Command::Routes => println!("{}", runtime.block_on(get(&cli.admin, "/routes"))?),
    }
    Ok(())
}

async fn get(admin: &str, path: &str) -> anyhow::Result<String> {
    let stream = tokio::net::TcpStream::connect(admin).await.with_context(|| {
        format!("connecting to the agent's admin API at {admin} (is mesh-agent running? --admin sets the address)")
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path).header("host", admin).body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    anyhow::ensure!(status.is_success(), "{path} answered {status}: {body}");
    Ok(body)
}
