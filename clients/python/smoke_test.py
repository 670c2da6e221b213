"""Smoke test of the generated Python client against a running suite.

Starts `reservoir up` on free ports with SQLite in a temporary directory,
then, as an outside caller would: creates an account, grants credits,
debits, and reads the balance and the ledger. Exits non-zero on any
mismatch, so a proto change that breaks Python callers fails CI.

    python smoke_test.py path/to/reservoir
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal

import grpc

from reservoir.invoicing.v1 import invoicing_pb2, invoicing_pb2_grpc
from reservoir.wallet.v1 import wallet_pb2 as pb
from reservoir.wallet.v1 import wallet_pb2_grpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_suite(binary: str, data_dir: str):
    wallet_port, metering_port, invoicing_port, payments_port = free_port(), free_port(), free_port(), free_port()
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
    return process, f"127.0.0.1:{wallet_port}", f"127.0.0.1:{invoicing_port}", key


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"FAILED: {message}")


def main() -> None:
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as data_dir:
        process, address, invoicing_address, key = start_suite(binary, data_dir)
        try:
            channel = grpc.insecure_channel(address)
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

            invoicing_channel = grpc.insecure_channel(invoicing_address)
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
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
