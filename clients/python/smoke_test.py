"""Smoke test of the generated Python client against a running suite.

Starts `reservoir up` on free ports with SQLite in a temporary directory,
then, as an outside caller would: creates an account, grants credits,
debits, and reads the balance and the ledger; registers a webhook endpoint
served here and verifies its deliveries with the Standard Webhooks library
from PyPI, before and during a secret rotation; and receives the same
events through `reservoir webhooks listen`. Exits non-zero on any mismatch,
so a proto change that breaks Python callers fails CI.

    python smoke_test.py path/to/reservoir
"""

import http.server
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal

import grpc
import standardwebhooks

from reservoir.invoicing.v1 import invoicing_pb2, invoicing_pb2_grpc
from reservoir.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from reservoir.wallet.v1 import wallet_pb2 as pb
from reservoir.wallet.v1 import wallet_pb2_grpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_suite(binary: str, data_dir: str):
    wallet_port, metering_port, invoicing_port, payments_port, orchestrator_port = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    )
    env = dict(os.environ)
    env.update(
        {
            "RESERVOIR__DATA_DIR": data_dir,
            "RESERVOIR__WALLET__LISTEN": f"127.0.0.1:{wallet_port}",
            "RESERVOIR__WALLET__DATABASE_URL": f"sqlite://{data_dir}/wallet.db?mode=rwc",
            "RESERVOIR__WALLET__METRICS_LISTEN": "127.0.0.1:0",
            "RESERVOIR__METERING__LISTEN": f"127.0.0.1:{metering_port}",
            "RESERVOIR__METERING__DATABASE_URL": f"sqlite://{data_dir}/metering.db?mode=rwc",
            "RESERVOIR__METERING__METRICS_LISTEN": "127.0.0.1:0",
            "RESERVOIR__INVOICING__LISTEN": f"127.0.0.1:{invoicing_port}",
            "RESERVOIR__INVOICING__DATABASE_URL": f"sqlite://{data_dir}/invoicing.db?mode=rwc",
            "RESERVOIR__INVOICING__METRICS_LISTEN": "127.0.0.1:0",
            "RESERVOIR__PAYMENTS__LISTEN": f"127.0.0.1:{payments_port}",
            "RESERVOIR__PAYMENTS__DATABASE_URL": f"sqlite://{data_dir}/payments.db?mode=rwc",
            "RESERVOIR__PAYMENTS__METRICS_LISTEN": "127.0.0.1:0",
            "RESERVOIR__ORCHESTRATOR__LISTEN": f"127.0.0.1:{orchestrator_port}",
            "RESERVOIR__ORCHESTRATOR__DATABASE_URL": f"sqlite://{data_dir}/orchestrator.db?mode=rwc",
            "RESERVOIR__ORCHESTRATOR__METRICS_LISTEN": "127.0.0.1:0",
            "RESERVOIR__ORCHESTRATOR__WEBHOOKS__INTERVAL_MS": "100",
            "RESERVOIR__CONSOLE__LISTEN": "127.0.0.1:0",
            "RESERVOIR__CONSOLE__METRICS_LISTEN": "127.0.0.1:0",
            "RESERVOIR__TELEMETRY__LOG_FILTER": "warn",
        }
    )
    process = subprocess.Popen([binary, "up"], env=env, stdout=subprocess.DEVNULL)
    key_path = os.path.join(data_dir, "dev-api-key")
    deadline = time.monotonic() + 60
    while not os.path.exists(key_path):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            sys.exit(f"reservoir up did not start (exit code {process.poll()})")
        time.sleep(0.1)
    with open(key_path) as file:
        key = file.read().strip()
    addresses = {
        "wallet": f"127.0.0.1:{wallet_port}",
        "invoicing": f"127.0.0.1:{invoicing_port}",
        "orchestrator": f"127.0.0.1:{orchestrator_port}",
    }
    return process, addresses, key


class Receiver(http.server.BaseHTTPRequestHandler):
    """Takes every POST as a delivery: its headers and body, answered 204."""

    deliveries: "queue.Queue[tuple[dict, bytes]]" = queue.Queue()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.deliveries.put(({name.lower(): value for name, value in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def next_delivery(event_type: str, timeout: float = 30) -> tuple:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            headers, body = Receiver.deliveries.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        if json.loads(body)["type"] == event_type:
            return headers, body
    sys.exit(f"FAILED: no {event_type} delivery within {timeout} s")


def check_webhooks(binary: str, addresses: dict, key: str, wallet, auth, account_id: str) -> None:
    """Deliveries verified by the Standard Webhooks library, and by `reservoir webhooks listen`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    channel = grpc.insecure_channel(addresses["orchestrator"])
    grpc.channel_ready_future(channel).result(timeout=30)
    webhooks = orchestrator_pb2_grpc.WebhookServiceStub(channel)
    created = webhooks.CreateWebhookEndpoint(
        orchestrator_pb2.CreateWebhookEndpointRequest(
            url=f"http://127.0.0.1:{server.server_address[1]}/hooks",
            event_types=["wallet.debited"],
            idempotency_key=str(uuid.uuid4()),
        ),
        metadata=auth,
        timeout=10,
    )
    # The endpoint gets events from a second after it was created on.
    time.sleep(1.5)
    listen = subprocess.Popen(
        [binary, "webhooks", "listen", "--listen", "127.0.0.1:0", "--events", "wallet.debited"],
        env=dict(
            os.environ,
            RESERVOIR_API_KEY=key,
            RESERVOIR_ORCHESTRATOR_ENDPOINT=f"http://{addresses['orchestrator']}",
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in listen.stdout], daemon=True).start()

    def listen_line(contains: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            if contains in line:
                return line
        listen.kill()
        sys.exit(f"FAILED: `reservoir webhooks listen` printed no line with {contains!r} within {timeout} s")

    try:
        listen_line("Ready: receiving deliveries")
        time.sleep(1.5)

        def debit(amount: str) -> None:
            wallet.Debit(
                pb.DebitRequest(account_id=account_id, amount=amount, idempotency_key=str(uuid.uuid4())),
                metadata=auth,
                timeout=10,
            )

        debit("0.25")
        headers, body = next_delivery("wallet.debited")
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
            check(name in headers, f"a delivery carries {name}")
        payload = standardwebhooks.Webhook(created.secret).verify(body, headers)
        check(Decimal(payload["data"]["amount"]) == Decimal("0.25"), f"the verified payload is the debit, got {payload}")
        check(payload["id"] == headers["webhook-id"], "webhook-id is the event's id")
        try:
            standardwebhooks.Webhook(created.secret).verify(body.replace(b'"0.25"', b'"0.26"'), headers)
            check(False, "a changed body does not verify")
        except standardwebhooks.WebhookVerificationError:
            pass
        line = listen_line("wallet.debited")
        check(line.rstrip().endswith("verified"), f"reservoir webhooks listen verified it: {line!r}")

        rotated = webhooks.RotateWebhookSecret(
            orchestrator_pb2.RotateWebhookSecretRequest(endpoint_id=created.endpoint.id), metadata=auth, timeout=10
        )
        debit("0.50")
        headers, body = next_delivery("wallet.debited")
        for secret in (rotated.secret, created.secret):
            payload = standardwebhooks.Webhook(secret).verify(body, headers)
            check(Decimal(payload["data"]["amount"]) == Decimal("0.5"), f"both secrets verify during the rotation, got {payload}")
        listen.terminate()
        listen.wait(timeout=30)
        listen_line("Disabled endpoint", timeout=5)
    finally:
        if listen.poll() is None:
            listen.kill()
        server.shutdown()
    print("python client: webhooks verified by standardwebhooks (before and during a rotation) and by `reservoir webhooks listen`")


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"FAILED: {message}")


def main() -> None:
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as data_dir:
        process, addresses, key = start_suite(binary, data_dir)
        try:
            channel = grpc.insecure_channel(addresses["wallet"])
            grpc.channel_ready_future(channel).result(timeout=30)
            wallet = wallet_pb2_grpc.WalletServiceStub(channel)
            auth = [("authorization", f"Bearer {key}")]

            account = wallet.CreateAccount(
                pb.CreateAccountRequest(
                    external_id=f"python-{uuid.uuid4()}",
                    unit=pb.Unit(code="USD"),
                    overdraft_policy=pb.OVERDRAFT_POLICY_NONE,
                    idempotency_key=str(uuid.uuid4()),
                ),
                metadata=auth,
                timeout=10,
            ).account
            wallet.GrantCredits(
                pb.GrantCreditsRequest(
                    account_id=account.id,
                    amount="25.00",
                    kind=pb.GRANT_KIND_PAID,
                    idempotency_key=str(uuid.uuid4()),
                ),
                metadata=auth,
                timeout=10,
            )
            debit = pb.DebitRequest(account_id=account.id, amount="7.25", idempotency_key=str(uuid.uuid4()))
            first = wallet.Debit(debit, metadata=auth, timeout=10)
            again = wallet.Debit(debit, metadata=auth, timeout=10)
            check(first == again, "a retried debit replays its first answer")

            balance = wallet.GetBalance(pb.GetBalanceRequest(account_id=account.id), metadata=auth, timeout=10).balance
            check(Decimal(balance.available) == Decimal("17.75"), f"available 17.75, got {balance.available}")
            entries = wallet.ListLedgerEntries(
                pb.ListLedgerEntriesRequest(account_id=account.id), metadata=auth, timeout=10
            ).entries
            kinds = [pb.EntryKind.Name(entry.kind) for entry in entries]
            check(kinds == ["ENTRY_KIND_GRANT", "ENTRY_KIND_DEBIT"], f"a grant then one debit, got {kinds}")
            check(Decimal(entries[-1].amount) == Decimal("-7.25"), f"debit of -7.25, got {entries[-1].amount}")

            try:
                wallet.Debit(
                    pb.DebitRequest(account_id=account.id, amount="100", idempotency_key=str(uuid.uuid4())),
                    metadata=auth,
                    timeout=10,
                )
                check(False, "a debit beyond the balance is refused")
            except grpc.RpcError as error:
                check(error.code() == grpc.StatusCode.FAILED_PRECONDITION, f"FAILED_PRECONDITION, got {error.code()}")
            try:
                wallet.GetBalance(pb.GetBalanceRequest(account_id=account.id), timeout=10)
                check(False, "a call without a key is refused")
            except grpc.RpcError as error:
                check(error.code() == grpc.StatusCode.UNAUTHENTICATED, f"UNAUTHENTICATED, got {error.code()}")

            invoicing_channel = grpc.insecure_channel(addresses["invoicing"])
            grpc.channel_ready_future(invoicing_channel).result(timeout=30)
            invoicing = invoicing_pb2_grpc.InvoicingServiceStub(invoicing_channel)
            draft = invoicing.CreateInvoice(
                invoicing_pb2.CreateInvoiceRequest(
                    account_id=account.id, credits="40", idempotency_key=str(uuid.uuid4())
                ),
                metadata=auth,
                timeout=10,
            ).invoice
            check(draft.status == invoicing_pb2.INVOICE_STATUS_DRAFT, f"a draft, got {draft.status}")
            check(draft.total == "40.00", f"total 40.00, got {draft.total}")
            invoice = invoicing.FinalizeInvoice(
                invoicing_pb2.FinalizeInvoiceRequest(invoice_id=draft.id), metadata=auth, timeout=10
            ).invoice
            check(invoice.number == 1, f"the tenant's first number, got {invoice.number}")
            print("python client: account, grant, debit (and its replay), balance, ledger, refusals and an invoice as expected")
            check_webhooks(binary, addresses, key, wallet, auth, account.id)
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
