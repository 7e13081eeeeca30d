"""End-to-end tests: real `dagster dev` / `dg dev` processes driven through GraphQL and a headless browser."""
