// The host page's fetch form: posts JSON to the service's /api and shows the answer.
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("fetch-form");
  const out = document.getElementById("fetch-result");
  if (!form || !out) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = new FormData(form);
    out.textContent = "Sending…";
    try {
      const response = await fetch(form.dataset.endpoint, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify({ name: fields.get("name"), data: { message: fields.get("message") } }),
      });
      const body = await response.json();
      out.textContent = JSON.stringify(body);
      out.dataset.status = String(response.status);
    } catch (error) {
      out.textContent = `Could not reach the service: ${error}`;
      out.dataset.status = "error";
    }
  });
});
