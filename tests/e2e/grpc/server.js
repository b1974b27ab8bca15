// A gRPC server with the standard health service (grpc.health.v1.Health/Check answers SERVING),
// as a gRPC microservice of a demo app has: no .proto files, the messages are raw protobuf bytes.
const grpc = require("@grpc/grpc-js");

const raw = (b) => b;
const check = { path: "/grpc.health.v1.Health/Check", requestStream: false, responseStream: false };
const health = { check: { ...check, requestSerialize: raw, requestDeserialize: raw, responseSerialize: raw, responseDeserialize: raw } };
const server = new grpc.Server();
server.addService(health, { check: (_call, callback) => callback(null, Buffer.from([0x08, 0x01])) }); // status: SERVING (1)
server.bindAsync("0.0.0.0:7070", grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) throw err;
  console.log(`grpc v1 listening on ${port}`);
});
