from enrich.cli import main

raise SystemExit(main())
