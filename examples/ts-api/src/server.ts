// devloop example: a small TypeScript HTTP service (node built-ins only; typescript compiles it).
import http from "node:http";
import { greeting } from "./greeting";

const port = Number(process.env.PORT ?? 3000);

const server = http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok\n");
    return;
  }
  res.writeHead(200, { "content-type": "text/plain" });
  res.end(`${greeting()}\n`);
});

server.listen(port, () => console.log(`ts-api listening on ${port}`));

// SIGTERM (Kubernetes, devloop's live update restart): stop accepting, finish, exit.
process.on("SIGTERM", () => server.close(() => process.exit(0)));
