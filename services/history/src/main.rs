//! chat-history: see the crate documentation.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chat_runtime::service::main::<chat_history::App>().await
}
