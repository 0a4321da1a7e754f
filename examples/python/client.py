"""A Python client of a served prepaid node, generated from proto/prepaid.proto.

    python3 -m pip install grpcio grpcio-tools
    python3 examples/python/client.py --addr 127.0.0.1:7070 --token $PREPAID_TOKEN

Generates the stubs into a temporary directory (grpcio-tools' protoc), then
opens an account, buys credits, authorizes usage over the Authorize stream
(replies matched by request id) and prints the balance. Exits non-zero if
any figure is not what the rules say.
"""

import argparse
import atexit
import os
import shutil
import sys
import tempfile

from grpc_tools import protoc
import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "..", "..", "proto")


def load_stubs():
    out = tempfile.mkdtemp(prefix="prepaid-py-")
    # The stubs are imported before anything else runs; the directory goes
    # when the script ends, whatever the outcome.
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    code = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}",
                        os.path.join(PROTO_DIR, "prepaid.proto")])
    if code != 0:
        sys.exit(f"protoc failed ({code})")
    sys.path.insert(0, out)
    import prepaid_pb2
    import prepaid_pb2_grpc
    return prepaid_pb2, prepaid_pb2_grpc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", default="127.0.0.1:7070")
    parser.add_argument("--token", default=os.environ.get("PREPAID_TOKEN", ""))
    parser.add_argument("--account", default="py_customer")
    args = parser.parse_args()
    pb, rpc = load_stubs()
    channel = grpc.insecure_channel(args.addr)
    stub = rpc.LedgerStub(channel)
    auth = [("authorization", f"Bearer {args.token}")]
    acct = args.account

    def one(**op):
        replies = stub.Execute(pb.Batch(requests=[pb.Request(id=1, **op)]), metadata=auth, timeout=10)
        reply = replies.replies[0]
        if reply.WhichOneof("result") == "refusal":
            raise RuntimeError(f"{reply.refusal.code}: {reply.refusal.message}")
        return reply.accepted

    one(open_account=pb.OpenAccount(account=acct))
    bought = one(purchase=pb.Purchase(account=acct, idempotency_key=f"{acct}-buy-1", amount="10.00"))
    print(f"purchased: balance {bought.balance}")

    # The hot path: many debits on one stream, replies tagged by id.
    def batches():
        for b in range(4):
            yield pb.Batch(requests=[
                pb.Request(id=b * 25 + i, debit=pb.Debit(account=acct, idempotency_key=f"{acct}-d{b}-{i}",
                                                          amount="0.01"))
                for i in range(25)])

    seen = set()
    for replies in stub.Authorize(batches(), metadata=auth, timeout=30):
        for r in replies.replies:
            if r.WhichOneof("result") != "accepted":
                sys.exit(f"debit {r.id} refused: {r.refusal.code}")
            seen.add(r.id)
    if seen != set(range(100)):
        sys.exit(f"missing replies: {sorted(set(range(100)) - seen)}")

    # Refusals carry a stable code.
    try:
        one(debit=pb.Debit(account=acct, idempotency_key=f"{acct}-too-much", amount="1000"))
        sys.exit("a debit beyond the balance was accepted")
    except RuntimeError as e:
        print(f"refused as expected: {e}")
        if not str(e).startswith("insufficient_funds"):
            sys.exit(1)

    view = one(balance=pb.Balance(account=acct)).balance_view
    print(f"balance {view.balance} (free {view.free}, purchased {view.purchased})")
    if view.balance != "9.00":
        sys.exit(f"expected 9 after 100 debits of 0.01, got {view.balance}")
    print("ok")


if __name__ == "__main__":
    main()
