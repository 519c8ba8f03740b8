// Starts Swagger UI on /docs from the API's own /openapi.json (a file, not an inline
// script: the page's Content-Security-Policy allows scripts from this origin only).
window.addEventListener("DOMContentLoaded", function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  if (!root || typeof window.SwaggerUIBundle !== "function") return;
  root.textContent = "";
  window.ui = window.SwaggerUIBundle({
    url: root.getAttribute("data-spec"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null, // never ask a validator on another site
    docExpansion: "list",
    defaultModelsExpandDepth: 1,
    displayRequestDuration: true,
    tryItOutEnabled: false,
    persistAuthorization: false
  });
});
