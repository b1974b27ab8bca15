// What GET / answers. Edit it while `devloop dev` runs: tsc runs in the pod and the app restarts.
export function greeting(): string {
  return "hello from ts-api";
}
