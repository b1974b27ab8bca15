// A gRPC client (run on the host): grpc.health.v1.Health/Check against 127.0.0.1:PORT; prints the
// status (SERVING, NOT_SERVING, UNKNOWN) or the gRPC error, and exits 0 only when SERVING.
const grpc = require("@grpc/grpc-js");

const raw = (b) => b;
const client = new grpc.Client(`127.0.0.1:${process.argv[2]}`, grpc.credentials.createInsecure());
const deadline = new Date(Date.now() + 15000);
client.makeUnaryRequest("/grpc.health.v1.Health/Check", raw, raw, Buffer.alloc(0), { deadline }, (err, reply) => {
  if (err) {
    console.log(`error: ${err.code} ${err.details}`);
    process.exit(1);
  }
  const status = reply.length >= 2 && reply[0] === 0x08 ? reply[1] : 0;
  const name = ["UNKNOWN", "SERVING", "NOT_SERVING"][status] || `status ${status}`;
  console.log(name);
  process.exit(status === 1 ? 0 : 1);
});
