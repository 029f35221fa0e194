// GET /docs: Swagger UI (its files served by this server, from the serve environment) on /openapi.json.
"use strict";

const tokenForm = document.getElementById("token-form");
const tokenInput = document.getElementById("token");
const status = document.getElementById("api-page-status");

async function start(token) {
  // With API_TOKEN set, the document itself needs the token: asked for once, then sent with every call.
  const auth = token ? { Authorization: `Bearer ${token}` } : {};
  let response;
  try {
    response = await fetch("openapi.json", { headers: auth }); // beside /docs, also under a proxy's prefix
  } catch (err) {
    status.textContent = `Could not load openapi.json: ${err}`;
    return;
  }
  if (response.status === 401) {
    tokenForm.hidden = false;
    status.textContent = token ? "That token was refused; try again." : "This server needs an API token.";
    tokenInput.focus();
    return;
  }
  if (!response.ok) {
    status.textContent = `openapi.json answered ${response.status}`;
    return;
  }
  tokenForm.hidden = true;
  status.remove();
  window.ui = SwaggerUIBundle({
    spec: await response.json(),
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // Swagger UI would send the document to validator.swagger.io for a badge: nothing leaves the box.
    validatorUrl: null,
    requestInterceptor: (request) => {
      if (token && !request.headers.Authorization) request.headers.Authorization = auth.Authorization;
      return request;
    },
  });
}

tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  start(tokenInput.value.trim());
});

start("");
